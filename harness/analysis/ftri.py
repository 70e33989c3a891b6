"""fTRI (functional Token Resonance Imaging): find the experts whose activation tells two classes apart.

Input: one routing count map [moe_layers, n_experts] per prompt (tokens of the chosen span routed to
each expert) with its token count, and each prompt's class. Output: a ranked table of
(layer, expert) with scores, a bootstrap stability figure, and the intervention that suppresses the
top k.

Scores (all "higher = more active in the target class"):
- `mean_diff` (MoTE, the default): difference of the class means of per-prompt activation shares.
- `risk_diff` (SteerMoE): difference of pooled token-level activation rates.
- `log_odds`: z-score of the add-alpha smoothed log odds ratio of pooled token counts, which
  discounts differences built on few tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from harness.mote.experts import ExpertSet
from harness.mote.intervention import Intervention, Mode

Score = Literal["mean_diff", "risk_diff", "log_odds"]
SCORES: tuple[Score, ...] = ("mean_diff", "risk_diff", "log_odds")


@dataclass(frozen=True)
class PromptCounts:
    """Routing of one prompt over the chosen span."""

    counts: np.ndarray  # int [moe_layers, n_experts]
    tokens: int  # tokens of the span (each routed to k experts per layer)
    label: str  # the prompt's class


@dataclass(frozen=True)
class RankedExpert:
    rank: int
    layer: int
    expert: int
    score: float
    share_target: float  # pooled share of target-class tokens routed to the expert
    share_other: float


@dataclass(frozen=True)
class FtriResult:
    """The ranking as parallel arrays, best first (rows are built on demand: at DeepSeek-R1 shape there
    are 14,848 of them)."""

    score: Score
    target: str
    other: str
    layers: tuple[int, ...]
    ranked_layers: np.ndarray  # absolute layer index per rank
    ranked_experts: np.ndarray
    ranked_scores: np.ndarray
    ranked_share_target: np.ndarray  # pooled share of target-class tokens routed to the expert
    ranked_share_other: np.ndarray
    n_prompts: dict[str, int]
    n_tokens: dict[str, int]
    excluded: ExpertSet
    stability: dict[str, float] = field(default_factory=dict)  # top-k Jaccard over bootstrap resamples

    def rows(self, n: int | None = None) -> list[RankedExpert]:
        count = len(self.ranked_scores) if n is None else min(n, len(self.ranked_scores))
        return [
            RankedExpert(
                rank=i + 1,
                layer=int(self.ranked_layers[i]),
                expert=int(self.ranked_experts[i]),
                score=float(self.ranked_scores[i]),
                share_target=float(self.ranked_share_target[i]),
                share_other=float(self.ranked_share_other[i]),
            )
            for i in range(count)
        ]

    @property
    def ranking(self) -> list[RankedExpert]:
        return self.rows()

    def top(self, k: int) -> ExpertSet:
        return ExpertSet(tuple(zip(self.ranked_layers[:k].tolist(), self.ranked_experts[:k].tolist(), strict=True)))

    def intervention(self, k: int, mode: Mode = "drop") -> Intervention:
        return Intervention(
            kind="suppress",
            mode=mode,
            experts=self.top(k),
            name=f"ftri-top{k}",
            provenance={
                "method": "ftri",
                "score": self.score,
                "target": self.target,
                "other": self.other,
                "k": k,
                "n_prompts": dict(self.n_prompts),
            },
        )


@dataclass(frozen=True)
class ClassStats:
    """One class's activation: mean of per-prompt shares, pooled counts and tokens, prompt count."""

    mean_share: np.ndarray  # [moe_layers, n_experts]
    pooled: np.ndarray  # [moe_layers, n_experts]
    tokens: int
    prompts: int

    @property
    def pooled_share(self) -> np.ndarray:
        return np.asarray(self.pooled / self.tokens)


def class_stats(prompts: Sequence[PromptCounts], label: str) -> ClassStats:
    chosen = [p for p in prompts if p.label == label and p.tokens > 0]
    if not chosen:
        raise ValueError(f"no prompt with tokens in class {label!r}")
    counts = np.stack([p.counts for p in chosen]).astype(np.float64)
    tokens = np.array([p.tokens for p in chosen], dtype=np.float64)
    pooled = counts.sum(axis=0)
    mean_share = np.einsum("ple,p->le", counts, 1.0 / tokens) / len(chosen)
    return ClassStats(mean_share, pooled, int(tokens.sum()), len(chosen))


def score_map(target: ClassStats, other: ClassStats, score: Score, alpha: float = 0.5) -> np.ndarray:
    """Score [moe_layers, n_experts] for `target` vs `other`."""
    if score == "mean_diff":
        return np.asarray(target.mean_share - other.mean_share, dtype=np.float64)
    if score == "risk_diff":
        return np.asarray(target.pooled_share - other.pooled_share, dtype=np.float64)
    if score == "log_odds":
        a, b = target.pooled + alpha, target.tokens - target.pooled + alpha
        c, d = other.pooled + alpha, other.tokens - other.pooled + alpha
        log_or = np.log(a / b) - np.log(c / d)
        return np.asarray(log_or / np.sqrt(1 / a + 1 / b + 1 / c + 1 / d), dtype=np.float64)
    raise ValueError(f"unknown score {score!r}; choose one of {SCORES}")


def always_on(classes: Sequence[ClassStats], layers: Sequence[int], threshold: float) -> ExpertSet:
    """Experts routed for >= `threshold` of the tokens of *every* class ("super experts")."""
    hot = np.logical_and.reduce([c.pooled_share >= threshold for c in classes])
    return ExpertSet(tuple((layers[i], int(e)) for i, e in zip(*np.nonzero(hot), strict=True)))


def rank(
    prompts: Sequence[PromptCounts],
    layers: Sequence[int],
    target: str,
    other: str,
    score: Score = "mean_diff",
    exclude: ExpertSet | None = None,
    always_on_threshold: float | None = 0.5,
) -> FtriResult:
    """Rank every (layer, expert) by `score`; ties broken by (layer, expert) ascending."""
    if target == other:
        raise ValueError("target and other class must differ")
    stats_t, stats_o = class_stats(prompts, target), class_stats(prompts, other)
    scores = score_map(stats_t, stats_o, score)
    share_t, share_o = stats_t.pooled_share, stats_o.pooled_share
    excluded = exclude or ExpertSet()
    if always_on_threshold is not None:
        excluded = excluded.union(always_on((stats_t, stats_o), layers, always_on_threshold))
    blocked = np.zeros(scores.shape, dtype=bool)
    layer_pos = {layer: i for i, layer in enumerate(layers)}
    for layer, expert in excluded:
        if layer in layer_pos and expert < scores.shape[1]:
            blocked[layer_pos[layer], expert] = True
    rows, cols = np.nonzero(~blocked)
    order = np.lexsort((cols, rows, -scores[rows, cols]))  # last key is primary: -score, then layer, expert
    rows, cols = rows[order], cols[order]
    return FtriResult(
        score=score,
        target=target,
        other=other,
        layers=tuple(int(x) for x in layers),
        ranked_layers=np.asarray(layers, dtype=np.int64)[rows],
        ranked_experts=cols.astype(np.int64),
        ranked_scores=scores[rows, cols],
        ranked_share_target=share_t[rows, cols],
        ranked_share_other=share_o[rows, cols],
        n_prompts={target: stats_t.prompts, other: stats_o.prompts},
        n_tokens={target: stats_t.tokens, other: stats_o.tokens},
        excluded=excluded,
    )


def bootstrap_stability(
    prompts: Sequence[PromptCounts],
    layers: Sequence[int],
    target: str,
    other: str,
    k: int,
    score: Score = "mean_diff",
    exclude: ExpertSet | None = None,
    always_on_threshold: float | None = 0.5,
    n_resamples: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """Jaccard overlap of the top-k from resampled prompts (within each class, with replacement)
    with the top-k from all prompts: mean, 5th percentile and minimum over resamples."""
    full = rank(prompts, layers, target, other, score, exclude, always_on_threshold).top(k)
    by_class = {label: [p for p in prompts if p.label == label] for label in (target, other)}
    rng = np.random.Generator(np.random.PCG64(seed))
    overlaps = []
    for _ in range(n_resamples):
        sample = [group[i] for group in by_class.values() for i in rng.integers(0, len(group), len(group))]
        top = rank(sample, layers, target, other, score, exclude, always_on_threshold).top(k)
        union = set(full) | set(top)
        overlaps.append(len(set(full) & set(top)) / len(union) if union else 1.0)
    values = np.asarray(overlaps)
    return {
        "jaccard_mean": float(values.mean()),
        "jaccard_p05": float(np.percentile(values, 5)),
        "jaccard_min": float(values.min()),
        "n_resamples": float(n_resamples),
    }


def rank_with_stability(
    prompts: Sequence[PromptCounts],
    layers: Sequence[int],
    target: str,
    other: str,
    k: int,
    score: Score = "mean_diff",
    exclude: ExpertSet | None = None,
    always_on_threshold: float | None = 0.5,
    bootstrap: int = 200,
    seed: int = 0,
) -> FtriResult:
    """`rank`, with `stability` filled from `bootstrap` resamples of the top k (none when 0)."""
    result = rank(prompts, layers, target, other, score, exclude, always_on_threshold)
    if not bootstrap:
        return result
    stability = bootstrap_stability(
        prompts,
        layers,
        target,
        other,
        k,
        score,
        exclude,
        always_on_threshold,
        n_resamples=bootstrap,
        seed=seed,
    )
    return FtriResult(**{**result.__dict__, "stability": stability})

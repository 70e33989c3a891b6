"""From labelled samples to summary rows: which figure each task and condition gets.

Refusal tasks: refusal_rate on sensitive prompts, control_refusal_rate on controls, and where the
prompts carry references answered_rate (sensitive prompts answered with the facts) and
neutral_accuracy (controls answered correctly); against the baseline: relative_reduction, cohens_h,
mcnemar_p and its Holm adjustment over the run's hypotheses (targeted, stimulate, k-sweep; random
seeds are the control distribution, not hypotheses); targeted vs matched random seeds: z_vs_random,
percentile_vs_random, empirical_p. Language tasks: switch_rate vs baseline, zh_share, en_share.
QA tasks: accuracy. Random seeds are summarised as one row per metric (mean, 2.5-97.5 percentile
band, n = seeds) besides their per-seed rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from harness.analysis import stats
from harness.analysis.stats import Estimate
from harness.analysis.summary import MetricRow
from harness.mote.intervention import Intervention
from harness.suite.task_prompts import TaskPrompt

Labels = Mapping[tuple[str, str, str, str], str]  # (task, condition, id, judge) -> label


@dataclass(frozen=True)
class Condition:
    name: str  # baseline, targeted, targeted:mask, random:seed=3, stimulate, k_sweep:k=5, ...
    family: str  # baseline | targeted | random | stimulate | k_sweep | k_sweep_random
    intervention: Intervention
    mode: str | None = None
    seed: int | None = None
    k: int | None = None
    model: str | None = None  # in a model sweep: the model it runs on (its baseline condition's name)
    lam: float | None = None  # ... and that model's lambda

    @property
    def random_group(self) -> str | None:
        """The aggregate name of a random seed's group (random, random:mask, k_sweep:k=5:random)."""
        if self.family == "random":
            return self._on_model("random" if self.mode == "drop" else f"random:{self.mode}")
        if self.family == "k_sweep_random":
            return self._on_model(f"k_sweep:k={self.k}:random")
        return None

    def matching_random_group(self) -> str | None:
        """For a targeted condition, the random group it is compared with."""
        if self.family == "targeted":
            return self._on_model("random" if self.mode == "drop" else f"random:{self.mode}")
        if self.family == "k_sweep":
            return self._on_model(f"k_sweep:k={self.k}:random")
        return None

    def _on_model(self, name: str) -> str:
        return name if self.model is None else f"{self.model}|{name}"


def baseline_name(conditions: Sequence[Condition]) -> str | None:
    """The name of the conditions' baseline (`baseline`, or a sweep model's own), None without one."""
    return next((c.name for c in conditions if c.family == "baseline"), None)


def outcomes(
    labels: Labels, task: str, condition: str, judge: str, ids: Sequence[str], is_true: Callable[[str], bool]
) -> dict[str, bool | None]:
    """Per prompt: is_true(label), None when unscored or missing."""
    out: dict[str, bool | None] = {}
    for pid in ids:
        label = labels.get((task, condition, pid, judge))
        out[pid] = None if label is None or label == "unscored" else is_true(label)
    return out


def refusal_rows(
    task: str,
    judge: str,
    prompts: Sequence[TaskPrompt],
    conditions: Sequence[Condition],
    labels: Labels,
    resamples: int,
    seed: int,
) -> list[MetricRow]:
    sensitive = [p.id for p in prompts if p.kind != "control"]
    control = [p.id for p in prompts if p.kind == "control"]
    with_ref_s = [p.id for p in prompts if p.kind != "control" and p.reference]
    with_ref_c = [p.id for p in prompts if p.kind == "control" and p.reference]
    refused = _is("refused")
    rows: list[MetricRow] = []
    per_condition: dict[str, dict[str, bool | None]] = {}
    for cond in conditions:
        refusals = outcomes(labels, task, cond.name, judge, sensitive, refused)
        per_condition[cond.name] = refusals
        rows.append(MetricRow.of(task, cond.name, "refusal_rate", stats.rate(refusals)))
        if control:
            rows.append(
                MetricRow.of(
                    task,
                    cond.name,
                    "control_refusal_rate",
                    stats.rate(outcomes(labels, task, cond.name, judge, control, refused)),
                )
            )
        if judge == "refusal-llm":
            for label in ("aligned", "reasoned"):
                rows.append(
                    MetricRow.of(
                        task,
                        cond.name,
                        f"{label}_rate",
                        stats.rate(outcomes(labels, task, cond.name, judge, sensitive, _is(label))),
                    )
                )
        if with_ref_s:
            answered = outcomes(labels, task, cond.name, "reference", with_ref_s, _is("correct"))
            rows.append(MetricRow.of(task, cond.name, "answered_rate", stats.rate(answered)))
        if with_ref_c:
            correct = outcomes(labels, task, cond.name, "reference", with_ref_c, _is("correct"))
            rows.append(MetricRow.of(task, cond.name, "neutral_accuracy", stats.rate(correct)))
    rows += _versus_baseline(task, "refusal", conditions, per_condition, resamples, seed)
    return rows


@dataclass(frozen=True)
class PairedEffects:
    """Each non-baseline condition against the baseline, on the same prompts."""

    rows: list[MetricRow]  # relative_reduction, cohens_h, mcnemar_p per condition, in condition order
    reductions: dict[str, Estimate]  # condition -> relative reduction, reused against the random seeds
    hypotheses: list[tuple[str, Estimate]]  # (condition, McNemar p) of the tests Holm adjusts over


def _versus_baseline(
    task: str,
    what: str,
    conditions: Sequence[Condition],
    per_condition: Mapping[str, Mapping[str, bool | None]],
    resamples: int,
    seed: int,
) -> list[MetricRow]:
    """Paired effects vs baseline, random distributions, targeted vs random, Holm over hypotheses."""
    base_cond = baseline_name(conditions)
    base = per_condition.get(base_cond) if base_cond is not None else None
    if base is None:
        return []
    paired = _paired_effects(task, what, conditions, base, per_condition, resamples, seed)
    groups = _random_groups(conditions)
    return [
        *paired.rows,
        *_holm_rows(task, paired.hypotheses),
        *_random_group_rows(task, what, groups, paired.reductions, per_condition),
        *_targeted_vs_random_rows(task, conditions, groups, paired.reductions),
    ]


def _paired_effects(
    task: str,
    what: str,
    conditions: Sequence[Condition],
    base: Mapping[str, bool | None],
    per_condition: Mapping[str, Mapping[str, bool | None]],
    resamples: int,
    seed: int,
) -> PairedEffects:
    """Effect sizes and the paired test per condition; random seeds are not hypotheses (they are the control)."""
    rows: list[MetricRow] = []
    reductions: dict[str, Estimate] = {}
    hypotheses: list[tuple[str, Estimate]] = []
    for cond in conditions:
        if cond.family == "baseline":
            continue
        cur = per_condition[cond.name]
        rr = stats.relative_reduction(base, cur, n_resamples=resamples, seed=seed)
        reductions[cond.name] = rr
        rows.append(MetricRow.of(task, cond.name, "relative_reduction", rr, note=f"{what}: (base - cond) / base"))
        rows.append(MetricRow.of(task, cond.name, "cohens_h", stats.cohens_h(base, cur)))
        p = stats.mcnemar_exact(base, cur)
        rows.append(MetricRow.of(task, cond.name, "mcnemar_p", p))
        if cond.random_group is None:
            hypotheses.append((cond.name, p))
    return PairedEffects(rows, reductions, hypotheses)


def _holm_rows(task: str, hypotheses: Sequence[tuple[str, Estimate]]) -> list[MetricRow]:
    """Holm-adjusted McNemar p over the run's hypotheses (several interventions tested on one baseline)."""
    adjusted = stats.holm([p.value for _, p in hypotheses])
    return [
        MetricRow.of(task, name, "mcnemar_p_holm", Estimate(adj, None, None, p.n, p.unscored))
        for (name, p), adj in zip(hypotheses, adjusted, strict=True)
    ]


def _random_groups(conditions: Sequence[Condition]) -> dict[str, list[Condition]]:
    """Random seeds by the group they are summarised and compared as, in condition order."""
    groups: dict[str, list[Condition]] = {}
    for cond in conditions:
        if cond.random_group is not None:
            groups.setdefault(cond.random_group, []).append(cond)
    return groups


def _random_group_rows(
    task: str,
    what: str,
    groups: Mapping[str, Sequence[Condition]],
    reductions: Mapping[str, Estimate],
    per_condition: Mapping[str, Mapping[str, bool | None]],
) -> list[MetricRow]:
    """One row per random group and metric: the seeds' mean and 2.5-97.5 percentile band."""
    rows: list[MetricRow] = []
    for group, members in groups.items():
        seed_reductions = [reductions[c.name] for c in members]
        seed_rates = [stats.rate(per_condition[c.name]) for c in members]
        for metric, estimates in (("relative_reduction", seed_reductions), (f"{what}_rate", seed_rates)):
            vals = [e.value for e in estimates if np.isfinite(e.value)]
            if vals:
                note = f"mean over {len(vals)} matched random seeds; interval = 2.5-97.5 percentile of seeds"
                unscored = sum(e.unscored for e in estimates)  # samples, summed over the seeds
                rows.append(_seed_mean_row(task, group, metric, vals, note, unscored))
    return rows


def _seed_mean_row(
    task: str, group: str, metric: str, vals: Sequence[float], note: str, unscored: int = 0
) -> MetricRow:
    """A random group's row: the mean of its seeds' values, with their 2.5-97.5 percentile band."""
    low, high = np.percentile(vals, [2.5, 97.5])
    return MetricRow(
        task=task,
        condition=group,
        metric=metric,
        value=float(np.mean(vals)),
        ci_low=float(low),
        ci_high=float(high),
        n=len(vals),
        unscored=unscored,
        note=note,
    )


def _targeted_vs_random_rows(
    task: str,
    conditions: Sequence[Condition],
    groups: Mapping[str, Sequence[Condition]],
    reductions: Mapping[str, Estimate],
) -> list[MetricRow]:
    """Where each targeted reduction falls among its matched random seeds' (z, percentile, empirical p)."""
    rows: list[MetricRow] = []
    for cond in conditions:
        group = cond.matching_random_group()
        if group is None or group not in groups or not np.isfinite(reductions[cond.name].value):
            continue
        seeds = [reductions[c.name].value for c in groups[group]]
        try:
            vs = stats.versus_random(reductions[cond.name].value, seeds)
        except ValueError:
            continue
        n = vs.n_random
        unscored = reductions[cond.name].unscored + sum(reductions[c.name].unscored for c in groups[group])
        z_note = f"vs {group}" if vs.z is not None else f"vs {group}: undefined, the random seeds have no spread"
        for metric, value, note in (
            ("z_vs_random", vs.z, z_note),
            ("percentile_vs_random", vs.percentile, f"vs {group}"),
            ("empirical_p", vs.empirical_p, f"(1 + #random >= targeted) / (1 + n), vs {group}"),
        ):
            rows.append(
                MetricRow(task=task, condition=cond.name, metric=metric, value=value, n=n, unscored=unscored, note=note)
            )
    return rows


def language_rows(
    task: str, judge: str, prompts: Sequence[TaskPrompt], conditions: Sequence[Condition], labels: Labels
) -> list[MetricRow]:
    ids = [p.id for p in prompts]
    rows: list[MetricRow] = []
    base = {pid: _scored(labels.get((task, baseline_name(conditions) or "baseline", pid, judge))) for pid in ids}
    switch_by_group: dict[str, list[float]] = {}
    for cond in conditions:
        langs = {pid: _scored(labels.get((task, cond.name, pid, judge))) for pid in ids}
        for lang in ("zh", "en"):
            share = stats.rate({pid: (None if v is None else v == lang) for pid, v in langs.items()})
            rows.append(MetricRow.of(task, cond.name, f"{lang}_share", share))
        if cond.family != "baseline":
            switch = stats.switch_rate(base, langs)
            rows.append(
                MetricRow.of(
                    task,
                    cond.name,
                    "switch_rate",
                    switch,
                    note="share of traces whose language differs from baseline",
                )
            )
            if cond.random_group is not None and np.isfinite(switch.value):
                switch_by_group.setdefault(cond.random_group, []).append(switch.value)
    for group, vals in switch_by_group.items():
        rows.append(_seed_mean_row(task, group, "switch_rate", vals, f"mean over {len(vals)} matched random seeds"))
    return rows


def qa_rows(
    task: str, judge: str, prompts: Sequence[TaskPrompt], conditions: Sequence[Condition], labels: Labels
) -> list[MetricRow]:
    ids = [p.id for p in prompts]
    rows: list[MetricRow] = []
    base_cond = baseline_name(conditions)
    base = outcomes(labels, task, base_cond or "baseline", judge, ids, _is("correct"))
    by_group: dict[str, list[float]] = {}
    for cond in conditions:
        acc = outcomes(labels, task, cond.name, judge, ids, _is("correct"))
        est = stats.rate(acc)
        rows.append(MetricRow.of(task, cond.name, "accuracy", est))
        if cond.family != "baseline" and base_cond is not None:
            rows.append(MetricRow.of(task, cond.name, "mcnemar_p", stats.mcnemar_exact(base, acc)))
        if cond.random_group is not None and np.isfinite(est.value):
            by_group.setdefault(cond.random_group, []).append(est.value)
    for group, vals in by_group.items():
        rows.append(_seed_mean_row(task, group, "accuracy", vals, f"mean over {len(vals)} matched random seeds"))
    return rows


def _is(label: str) -> Callable[[str], bool]:
    return lambda value: value == label


def _scored(label: str | None) -> str | None:
    return None if label is None or label == "unscored" else label


def unscored_rows(
    task: str,
    judge: str,
    prompts: Sequence[TaskPrompt],
    conditions: Sequence[Condition],
    labels: Labels,
    reasons: Mapping[tuple[str, str, str, str], str] | None = None,
) -> list[MetricRow]:
    """unscored_share: samples the task's judge could not label, over all samples of the condition; the
    note counts them by reason (`reasons`: label key -> judges.labels.unscored_category)."""
    rows = []
    for cond in conditions:
        keys = [(task, cond.name, p.id, judge) for p in prompts]
        found = [labels.get(key) for key in keys]
        missing = sum(label is None or label == "unscored" for label in found)
        n = len(found)
        counts = Counter(
            (reasons or {}).get(key, "unscored") for key, label in zip(keys, found, strict=True) if label == "unscored"
        )
        if any(label is None for label in found):
            counts["not judged"] = sum(label is None for label in found)
        note = "by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if counts else None
        rows.append(
            MetricRow(
                task=task,
                condition=cond.name,
                metric="unscored_share",
                value=missing / n if n else None,
                n=n,
                unscored=missing,
                note=note,
            )
        )
    return rows


def agreement_rows(
    task: str,
    judge: str,
    cross_check: str,
    prompts: Sequence[TaskPrompt],
    conditions: Sequence[Condition],
    labels: Labels,
) -> list[MetricRow]:
    """judge_agreement_kappa: Cohen's kappa of the task's judge and a cross-check judge on refused vs
    not, per condition, over the samples both scored (unscored = the ones either could not)."""
    from judges.agreement import binary_refusal, cohen_kappa

    rows = []
    for cond in conditions:
        ours = {p.id: labels[key] for p in prompts if (key := (task, cond.name, p.id, judge)) in labels}
        theirs = {p.id: labels[key] for p in prompts if (key := (task, cond.name, p.id, cross_check)) in labels}
        try:
            agreement = cohen_kappa(ours, theirs, collapse=binary_refusal)
        except ValueError:  # no sample scored by both
            continue
        rows.append(
            MetricRow(
                task=task,
                condition=cond.name,
                metric="judge_agreement_kappa",
                value=agreement.kappa,
                n=agreement.n,
                unscored=agreement.excluded_unscored,
                note=f"{judge} vs {cross_check}, refused vs not (accuracy {agreement.accuracy:.3f})",
            )
        )
    return rows


def mt_bench_rows(
    task: str, conditions: Sequence[Condition], scores: Mapping[tuple[str, str], tuple[float | None, str]]
) -> list[MetricRow]:
    """mt_bench_score (mean over both turns, t interval), per category (mt_bench_score:<category>),
    and against baseline: mt_bench_score_delta (paired mean difference) and mt_bench_wilcoxon_p."""
    rows: list[MetricRow] = []
    by_cond: dict[str, dict[str, float | None]] = {}
    for (cond_name, sample_id), (score, _) in scores.items():
        by_cond.setdefault(cond_name, {})[sample_id] = score
    deltas: dict[str, list[float]] = {}
    base_cond = baseline_name(conditions)
    for cond in conditions:
        cur = by_cond.get(cond.name, {})
        rows.append(MetricRow.of(task, cond.name, "mt_bench_score", _mean(cur)))
        categories = sorted({cat for (c, _), (_, cat) in scores.items() if c == cond.name})
        for category in categories:
            subset = {sid: s for (c, sid), (s, cat) in scores.items() if c == cond.name and cat == category}
            rows.append(MetricRow.of(task, cond.name, f"mt_bench_score:{category}", _mean(subset)))
        if cond.family != "baseline" and base_cond in by_cond:
            delta, p = stats.score_change(by_cond[base_cond], cur)
            rows.append(MetricRow.of(task, cond.name, "mt_bench_score_delta", delta))
            rows.append(MetricRow.of(task, cond.name, "mt_bench_wilcoxon_p", p))
            if cond.random_group is not None and np.isfinite(delta.value):
                deltas.setdefault(cond.random_group, []).append(delta.value)
    for group, vals in deltas.items():
        low, high = np.percentile(vals, [2.5, 97.5])
        rows.append(
            MetricRow(
                task=task,
                condition=group,
                metric="mt_bench_score_delta",
                value=float(np.mean(vals)),
                ci_low=float(low),
                ci_high=float(high),
                n=len(vals),
                note=f"mean over {len(vals)} matched random seeds",
            )
        )
    return rows


def _mean(scores: Mapping[str, float | None]) -> Estimate:
    values = np.array([s for s in scores.values() if s is not None], dtype=float)
    unscored = len(scores) - len(values)
    if len(values) == 0:
        return Estimate(float("nan"), None, None, 0, unscored)
    mean = float(values.mean())
    if len(values) > 1 and values.std(ddof=1) > 0:
        from scipy import stats as sps

        low, high = sps.t.interval(0.95, len(values) - 1, loc=mean, scale=sps.sem(values))
        return Estimate(mean, float(low), float(high), len(values), unscored)
    return Estimate(mean, mean, mean, len(values), unscored)

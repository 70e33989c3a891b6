"""Report figures (matplotlib + seaborn), each drawn from what a run stored; PNG files.

- fTRI map: layer x expert heatmap of the stored class-difference score, top-k experts outlined;
- routing map: per-prompt discovery routing vectors (share of the fTRI span's tokens per expert)
  embedded in 2-D (t-SNE; PCA when there are too few prompts or no scikit-learn), coloured by label;
- refusal bars: refusal rate per condition with its stored interval, the random seeds' band and seeds;
- dose-response: relative reduction vs k, targeted vs the matched-random band, capability on a
  second axis;
- MT-Bench by category: per-category score per condition with its stored interval;
- a model sweep: per task, each curve metric against lambda with its interval as a band.

Each function returns None when the run lacks what the figure needs. Figures are built on
`matplotlib.figure.Figure` (no pyplot state, no GUI backend).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from harness.analysis.summary import MetricRow
from harness.report.runs import RunResults
from harness.report.tables import condition_order, is_seed_row

# Capability metrics for the dose-response's second axis, best first: (task type, metric, label).
CAPABILITY: tuple[tuple[str, str, str], ...] = (
    ("mt_bench", "mt_bench_score", "MT-Bench score"),
    ("qa", "accuracy", "QA accuracy"),
    ("refusal", "neutral_accuracy", "neutral accuracy"),
)
TARGET_COLOUR = "#c0392b"
RANDOM_COLOUR = "#7f8c8d"
CAPABILITY_COLOUR = "#2e86c1"


@dataclass(frozen=True)
class Plot:
    name: str  # file stem
    title: str
    path: Path
    caption: str


def _index(run: RunResults) -> dict[tuple[str, str, str], MetricRow]:
    return {(r.task, r.condition, r.metric): r for r in run.rows}


def _first_task(run: RunResults, task_type: str) -> str | None:
    names = run.tasks_of_type(task_type)
    return names[0] if names else None


def _v(row: MetricRow | None, field: str = "value") -> float:
    value = None if row is None else getattr(row, field)
    return float("nan") if value is None else float(value)


def _err(row: MetricRow) -> tuple[float, float]:
    value = row.value if row.value is not None else np.nan
    if row.ci_low is None or row.ci_high is None:
        return (0.0, 0.0)
    return (max(value - row.ci_low, 0.0), max(row.ci_high - value, 0.0))


def ftri_map(run: RunResults) -> tuple[Figure, str] | None:
    import seaborn as sns

    maps = run.ftri_maps()
    info = run.ftri()
    if maps is None or info is None:
        return None
    score = maps["score"]
    layers = [int(x) for x in maps["layers"]]
    n_layers, n_experts = score.shape
    k = int(info.get("k", 0))
    top = [(int(r["layer"]), int(r["expert"])) for r in info.get("top", [])[:k]]
    width = min(4 + n_experts * 0.35, 16)
    fig = Figure(figsize=(width, min(2 + n_layers * 0.45, 14)), layout="constrained")
    ax = fig.add_subplot()
    limit = float(np.nanmax(np.abs(score))) or 1.0
    sns.heatmap(
        score,
        ax=ax,
        cmap="RdBu_r",
        center=0.0,
        vmin=-limit,
        vmax=limit,
        yticklabels=layers,
        xticklabels=max(1, n_experts // 32),
        cbar_kws={"label": f"{info.get('score', 'score')} ({', '.join(info['classes']['target'])} - other)"},
    )
    for rank, (layer, expert) in enumerate(top, start=1):
        if layer in layers:
            y = layers.index(layer)
            ax.add_patch(_rect(expert, y))
            strong = abs(float(score[y, expert])) > 0.6 * limit
            colour = "white" if strong else "black"
            ax.text(expert + 0.5, y + 0.5, str(rank), ha="center", va="center", fontsize=9, weight="bold", color=colour)
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_title(f"fTRI map ({info.get('span', '?')} tokens, {info.get('split', '?')} split): top {k} outlined")
    caption = "Top experts: " + ", ".join(f"L{layer}/E{expert}" for layer, expert in top)
    return fig, caption


def _rect(x: int, y: int) -> Rectangle:
    return Rectangle((x, y), 1, 1, fill=False, edgecolor="black", linewidth=2)


def routing_embedding(run: RunResults) -> tuple[Figure, str] | None:
    import seaborn as sns

    info = run.ftri()
    if info is None:
        return None
    spans = {
        "prompt": ["prompt"],
        "think": ["think"],
        "answer": ["answer"],
        "generated": ["think", "answer"],
        "all": ["prompt", "think", "answer"],
    }[str(info.get("span", "prompt"))]
    task = str(info["task"])
    labels = run.labels(task, "discovery")
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    for pid, row in run.discovery_routing().items():
        counts = np.sum([row[f"counts_{s}"].astype(float) for s in spans], axis=0)
        tokens = float(sum(row[f"tokens_{s}"] for s in spans))
        ids.append(pid)
        vectors.append(counts.ravel() / max(tokens, 1.0))
    if len(vectors) < 3:
        return None
    points, method = embed(np.stack(vectors))
    hue = [labels.get(pid, "unlabelled") for pid in ids]
    fig = Figure(figsize=(6.5, 5), layout="constrained")
    ax = fig.add_subplot()
    sns.scatterplot(x=points[:, 0], y=points[:, 1], hue=hue, style=hue, ax=ax, s=55, palette="deep")
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(f"Per-prompt routing ({'+'.join(spans)} tokens), {method}")
    ax.legend(title=f"{run.judge_of(task) or 'label'}", loc="best", fontsize=8)
    return fig, f"{len(ids)} discovery prompts of task {task}; each point is one prompt's expert-share vector."


def embed(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D t-SNE of the rows (scikit-learn), or PCA when there are fewer than 6 rows or no sklearn."""
    n = len(vectors)
    if n >= 6:
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            pass
        else:
            perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
            tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500)
            return np.asarray(tsne.fit_transform(vectors)), "t-SNE"
    centred = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    points = centred @ vt[:2].T
    if points.shape[1] < 2:
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
    return points, "PCA"


def refusal_bars(run: RunResults) -> tuple[Figure, str] | None:
    task = _first_task(run, "refusal")
    if task is None:
        return None
    index = _index(run)
    conditions = sorted(
        {
            r.condition
            for r in run.rows
            if r.task == task and r.metric == "refusal_rate" and not is_seed_row(r.condition)
            if not r.condition.startswith("k_sweep")
        },
        key=condition_order,
    )
    rows = [index[(task, c, "refusal_rate")] for c in conditions if index[(task, c, "refusal_rate")].value is not None]
    if not rows:
        return None
    fig = Figure(figsize=(max(5.0, 1.1 * len(rows) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    xs = np.arange(len(rows))
    colours = [RANDOM_COLOUR if r.condition.startswith("random") else _bar_colour(r.condition) for r in rows]
    errors = np.array([_err(r) for r in rows]).T
    bars = ax.bar(xs, [_v(r) for r in rows], color=colours, yerr=errors, capsize=4, edgecolor="black", linewidth=0.5)
    ax.bar_label(bars, labels=[f"{r.value:.2f}" for r in rows], label_type="center", fontsize=8)
    random = index.get((task, "random", "refusal_rate"))
    if random is not None and random.ci_low is not None and random.ci_high is not None:
        ax.axhspan(
            random.ci_low,
            random.ci_high,
            color=RANDOM_COLOUR,
            alpha=0.18,
            zorder=0,
            label=f"random seeds 2.5-97.5% (n={random.n})",
        )
    for x, r in zip(xs, rows, strict=True):
        if r.condition.startswith("random"):
            seeds = _seed_values(run, task, f"{r.condition}:seed=", "refusal_rate")
            jitter = np.linspace(-0.25, 0.25, len(seeds)) if len(seeds) > 1 else np.zeros(len(seeds))
            ax.scatter(x + jitter, seeds, s=10, color="black", alpha=0.6, zorder=3)
    ax.set_xticks(xs, [r.condition for r in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"refusal rate ({task})")
    ax.set_title("Refusals per condition (95% intervals; dots: random seeds)")
    if random is not None:
        ax.legend(loc="upper right", fontsize=8)
    return fig, "Bars: Wilson 95% intervals; random bars: mean and 2.5-97.5 percentile over seeds."


def _bar_colour(condition: str) -> str:
    return {"baseline": "#bdc3c7", "stimulate": "#8e44ad"}.get(condition, TARGET_COLOUR)


def _seed_values(run: RunResults, task: str, prefix: str, metric: str) -> list[float]:
    return [
        r.value
        for r in run.rows
        if r.task == task and r.metric == metric and r.condition.startswith(prefix) and r.value is not None
    ]


@dataclass(frozen=True)
class DoseData:
    """What the dose-response figure shows, read from the stored rows before anything is drawn."""

    task: str
    ks: list[int]  # every k of the sweep
    targeted: list[tuple[int, MetricRow]]  # k -> the targeted relative reduction, where stored
    band: list[tuple[int, MetricRow]]  # k -> the matched random group's row, where it has an interval
    seeds: dict[int, list[float]]  # k -> the random seeds' relative reductions, for the band's ks
    capability: tuple[str, list[tuple[int, float]]] | None  # second axis: label, (k, value)


def dose_response(run: RunResults) -> tuple[Figure, str] | None:
    """Relative reduction vs k, targeted against the matched random band; None without a k-sweep."""
    data = _dose_data(run)
    return None if data is None else _draw_dose_response(data)


def _dose_data(run: RunResults) -> DoseData | None:
    task = _first_task(run, "refusal")
    if task is None:
        return None
    index = _index(run)
    ks = sorted(
        {
            int(r.condition.split("=")[1])
            for r in run.rows
            if r.task == task and r.condition.startswith("k_sweep:k=") and r.condition.count(":") == 1
        }
    )
    found = [(k, index.get((task, f"k_sweep:k={k}", "relative_reduction"))) for k in ks]
    points = [(k, r) for k, r in found if r is not None and r.value is not None]
    if not points:
        return None
    randoms = [(k, index.get((task, f"k_sweep:k={k}:random", "relative_reduction"))) for k in ks]
    band = [(k, r) for k, r in randoms if r is not None and r.value is not None and r.ci_low is not None]
    seeds = {k: _seed_values(run, task, f"k_sweep:k={k}:random:seed=", "relative_reduction") for k, _ in band}
    return DoseData(task, ks, points, band, seeds, _capability(run, ks))


def _draw_dose_response(data: DoseData) -> tuple[Figure, str]:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    kx = np.array([k for k, _ in data.targeted], dtype=float)
    ax.errorbar(
        kx,
        [_v(r) for _, r in data.targeted],
        yerr=np.array([_err(r) for _, r in data.targeted]).T,
        color=TARGET_COLOUR,
        marker="o",
        capsize=4,
        label="targeted (top-k fTRI experts)",
    )
    if data.band:
        _draw_random_band(ax, data)
    if kx.max() / max(kx.min(), 1) >= 10:
        ax.set_xscale("log")
    ax.set_xticks(kx, [str(int(k)) for k in kx])
    ax.set_xlabel("k (experts suppressed)")
    ax.set_ylabel(f"relative reduction of refusals ({data.task})")
    ax.axhline(0, color="black", linewidth=0.5)
    caption = "Targeted: paired-bootstrap 95% intervals."
    handles, names = ax.get_legend_handles_labels()
    if data.capability is not None:
        label, values = data.capability
        twin = ax.twinx()
        cx = [k for k, v in values]
        line = twin.plot(cx, [v for _, v in values], color=CAPABILITY_COLOUR, marker="s", linestyle=":", label=label)
        twin.set_ylabel(label, color=CAPABILITY_COLOUR)
        handles += line
        names.append(label)
        caption += f" Second axis: {label} under the targeted top-k suppression."
    ax.legend(handles, names, fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.set_title("Dose-response: effect vs k")
    return fig, caption


def _draw_random_band(ax: Axes, data: DoseData) -> None:
    """The matched random seeds: their 2.5-97.5% band, their mean, and each seed as a dot."""
    bx = np.array([k for k, _ in data.band], dtype=float)
    ax.fill_between(
        bx,
        [_v(r, "ci_low") for _, r in data.band],
        [_v(r, "ci_high") for _, r in data.band],
        color=RANDOM_COLOUR,
        alpha=0.25,
        label="matched random, 2.5-97.5% of seeds",
    )
    ax.plot(bx, [_v(r) for _, r in data.band], color=RANDOM_COLOUR, linestyle="--", marker=".", label="random mean")
    for k, _ in data.band:
        seeds = data.seeds[k]
        ax.scatter([k] * len(seeds), seeds, s=8, color="black", alpha=0.4, zorder=3)


def _capability(run: RunResults, ks: Sequence[int]) -> tuple[str, list[tuple[int, float]]] | None:
    index = _index(run)
    for task_type, metric, label in CAPABILITY:
        task = _first_task(run, task_type)
        if task is None:
            continue
        values = [
            (k, index[(task, f"k_sweep:k={k}", metric)].value) for k in ks if (task, f"k_sweep:k={k}", metric) in index
        ]
        found = [(k, float(v)) for k, v in values if v is not None]
        if found:
            return label, found
    return None


def mt_bench_categories(run: RunResults) -> tuple[Figure, str] | None:
    task = _first_task(run, "mt_bench")
    if task is None:
        return None
    prefix = "mt_bench_score:"
    rows = [
        r
        for r in run.rows
        if r.task == task
        and r.metric.startswith(prefix)
        and r.value is not None
        and not is_seed_row(r.condition)
        and not r.condition.startswith("k_sweep")
    ]
    if not rows:
        return None
    categories = sorted({r.metric.removeprefix(prefix) for r in rows})
    conditions = sorted({r.condition for r in rows}, key=condition_order)
    fig = Figure(figsize=(max(7.0, 1.2 * len(categories) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(conditions)
    index = {(r.condition, r.metric.removeprefix(prefix)): r for r in rows}
    palette = _palette(len(conditions))
    for i, cond in enumerate(conditions):
        xs: list[float] = []
        ys: list[float] = []
        errs: list[tuple[float, float]] = []
        for j, cat in enumerate(categories):
            row = index.get((cond, cat))
            if row is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(_v(row))
                errs.append(_err(row))
        ax.bar(xs, ys, width=width, yerr=np.array(errs).T if errs else None, capsize=2, label=cond, color=palette[i])
    ax.set_xticks(np.arange(len(categories)), categories, rotation=20, ha="right")
    ax.set_ylim(0, 10.5)
    ax.set_ylabel("MT-Bench score (1-10)")
    ax.set_title("MT-Bench by category (95% t intervals)")
    ax.legend(fontsize=8, ncol=min(len(conditions), 4), loc="upper center", bbox_to_anchor=(0.5, -0.22))
    return fig, "Mean judge rating over both turns, per category and condition."


def _palette(n: int) -> list[tuple[float, float, float]]:
    import seaborn as sns

    return [tuple(c) for c in sns.color_palette("deep", n)]


FIGURES: tuple[tuple[str, str, Callable[[RunResults], tuple[Figure, str] | None]], ...] = (
    ("refusal_bars", "Refusals per condition", refusal_bars),
    ("dose_response", "Dose-response (k-sweep)", dose_response),
    ("ftri_map", "fTRI map", ftri_map),
    ("routing_tsne", "Per-prompt routing", routing_embedding),
    ("mt_bench_categories", "MT-Bench by category", mt_bench_categories),
)


def render(run: RunResults, folder: Path) -> list[Plot]:
    """Every figure the run has data for, saved as folder/<name>.png."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    folder.mkdir(parents=True, exist_ok=True)
    plots = []
    for name, title, draw in FIGURES:
        made = draw(run)
        if made is None:
            continue
        fig, caption = made
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110, metadata={"Software": None})
        plots.append(Plot(name, title, path, caption))
    return plots + sweep_plots(run, folder)


def sweep_plots(run: RunResults, folder: Path) -> list[Plot]:
    """A model sweep's metrics against lambda, one figure per task."""
    from harness.sweep.report import sweep_figure

    if not any(r.lambda_ is not None for r in run.rows):
        return []
    parents = sorted({r.condition for r in run.rows if r.condition.startswith("parent=") and "|" not in r.condition})
    plots = []
    for task_type in ("refusal", "language", "qa", "mt_bench"):
        for task in run.tasks_of_type(task_type):
            fig = sweep_figure(list(run.rows), task, task_type, parents)
            if fig is None:
                continue
            path = folder / f"sweep_{task}.png"
            fig.savefig(path, dpi=110, metadata={"Software": None})
            caption = "each metric against lambda, 95% interval as a band; dashed: the parents as they are"
            plots.append(Plot(f"sweep_{task}", f"Sweep: {task}", path, caption))
    return plots

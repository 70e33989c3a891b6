"""A sweep's own rows and transitions, from what the run stored (samples, labels, MT-Bench scores).

Per model and condition: the sample figures (harness/sweep/sample_metrics.py); against the references
(the parents, or the sweep's endpoints): output_tokens_ratio:<reference>; the endpoints against the
parents they must reproduce: parent_match; per task, metric and carried condition: a transition
(harness/sweep/transitions.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.analysis.metrics import Condition, Labels
from harness.analysis.summary import MetricRow
from harness.suite.schema import Suite
from harness.suite.task_prompts import TaskPrompt
from harness.sweep import sample_metrics as sm
from harness.sweep.children import SEPARATOR, SweepModel, endpoint_parents
from harness.sweep.transitions import CURVE_METRICS, PromptValues, Transition, transition

CARRIED_FAMILIES = ("baseline", "targeted", "stimulate", "k_sweep")  # conditions a transition follows


@dataclass(frozen=True)
class SweepData:
    suite: Suite
    models: Sequence[SweepModel]
    prompts: Mapping[str, Sequence[TaskPrompt]]  # task -> its prompts in the evaluation split
    labels: Labels
    samples: Mapping[tuple[str, str], Mapping[str, Mapping[str, Any]]]  # (task, condition) -> id -> sample
    mt_scores: Mapping[str, Mapping[tuple[str, str], tuple[float | None, str]]]  # task -> (condition, id) -> score

    def of(self, task: str, condition: str) -> Mapping[str, Mapping[str, Any]]:
        return self.samples.get((task, condition), {})


def sample_rows(data: SweepData, conditions: Sequence[Condition]) -> list[MetricRow]:
    """The sample figures of each condition of one model, per task."""
    resamples, seed = data.suite.bootstrap_resamples, data.suite.seed
    return [
        row
        for task in data.suite.tasks
        for cond in conditions
        for row in sm.sample_rows(task.name, cond.name, data.of(task.name, cond.name), resamples, seed)
    ]


def references(data: SweepData) -> list[SweepModel]:
    """What output tokens are compared with: the parents run as they are, else the first and last model."""
    parents = [m for m in data.models if m.kind == "parent"]
    if parents:
        return parents
    return [data.models[0], data.models[-1]] if len(data.models) > 1 else list(data.models)


def reference_rows(data: SweepData) -> list[MetricRow]:
    """output_tokens_ratio:<reference> of every model's baseline, and parent_match of the endpoints."""
    resamples, seed = data.suite.bootstrap_resamples, data.suite.seed
    rows: list[MetricRow] = []
    refs = references(data)
    for model in data.models:
        for task in data.suite.tasks:
            mine = data.of(task.name, model.name)
            for ref in refs:
                if ref.name == model.name:
                    continue
                row = sm.ratio_row(task.name, model.name, mine, ref.name, data.of(task.name, ref.name), resamples, seed)
                if row is not None:
                    rows.append(row.model_copy(update={"lambda_": model.lam}))
    spec = data.suite.assembly
    if spec is not None and spec.parents:
        lam_of = {m.name: m.lam for m in data.models}
        for child, parent in endpoint_parents(spec).items():
            for task in data.suite.tasks:
                row = sm.match_row(task.name, child, data.of(task.name, child), parent, data.of(task.name, parent))
                rows.append(row.model_copy(update={"lambda_": lam_of.get(child)}))
    return rows


def prompt_values(data: SweepData, metric: str, task: str, condition: str) -> PromptValues:
    """Per prompt (or sample): the value whose mean over prompts is the metric (None: unscored)."""
    spec = data.suite.task(task)
    samples = data.of(task, condition)
    if metric == "trace_rate":
        return {i: float(sm.has_trace(s)) for i, s in samples.items()}
    if metric == "degenerate_rate":
        return {i: float(sm.degenerate(s)) for i, s in samples.items()}
    if metric == "output_tokens_mean":
        return {i: float(s["n_generated_tokens"]) for i, s in samples.items()}
    if metric == "mt_bench_score":
        scores = data.mt_scores.get(task, {})
        return {sid: score for (cond, sid), (score, _) in scores.items() if cond == condition}
    wanted = {"refusal_rate": "refused", "zh_share": "zh", "accuracy": "correct"}[metric]
    prompts = data.prompts[task]
    if metric == "refusal_rate":
        prompts = [p for p in prompts if p.kind != "control"]
    out: dict[str, float | None] = {}
    for p in prompts:
        label = data.labels.get((task, condition, p.id, spec.judge_name))
        out[p.id] = None if label is None or label == "unscored" else float(label == wanted)
    return out


def transitions(data: SweepData, conditions: Sequence[Condition]) -> list[Transition]:
    """Every task x curve metric x carried condition, over the models that have a lambda (at least two)."""
    swept = sorted((m for m in data.models if m.lam is not None), key=lambda m: float(m.lam or 0.0))
    if len({m.lam for m in swept}) < 2:
        return []
    carried = [c.name for c in conditions if c.model == swept[0].name and c.family in CARRIED_FAMILIES]
    lambdas = [float(m.lam or 0.0) for m in swept]
    out: list[Transition] = []
    for task in data.suite.tasks:
        for own in carried:
            suite_condition = own.partition(SEPARATOR)[2] or "baseline"
            for metric in CURVE_METRICS[task.type]:
                values = [prompt_values(data, metric, task.name, m.condition(suite_condition)) for m in swept]
                out.append(
                    transition(
                        task.name,
                        metric,
                        suite_condition,
                        lambdas,
                        values,
                        data.suite.bootstrap_resamples,
                        data.suite.seed,
                    )
                )
    return out

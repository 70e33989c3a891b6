"""Re-judge a finished run: generate once, then label its samples with another judge (a stronger LLM, a
second opinion), without touching the run's own labels, and measure how the judges agree.

A judge's labels go to RUN_DIR/judges/<label set>.jsonl (the label set is the judge's name, and for an
LLM judge `name@model`), keyed by task, condition, prompt id and the sample's intervention, appended
as they come: an interrupted re-judging resumes, and LLM replies are cached in the run's
judge-cache.sqlite. Prompts are recovered from the run's suite. `agreement` compares every pair of
label sets that labelled a task (the run's own and the re-judged ones): Cohen's kappa with its
confusion matrix, on refusal tasks over refused / not refused when the two judges' classes differ.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.common.errors import InputError
from harness.run.judge_set import JudgeSet
from harness.run.run_store import RunStore, drop_partial_line
from harness.suite.schema import EndpointSpec, Suite
from harness.suite.task_prompts import TaskPrompt, load_task_prompts

LLM_JUDGES = ("refusal-llm", "mt-bench")
TASK_TYPES = {  # which tasks a judge can label
    "refusal-llm": ("refusal",),
    "refusal-string": ("refusal",),
    "reference": ("refusal", "qa"),
    "reasoning-language": ("language",),
    "mt-bench": ("mt_bench",),
}
KIND = {  # label sets are compared only within a kind
    "refusal-llm": "refusal",
    "refusal-string": "refusal",
    "reasoning-language": "language",
    "reference": "reference",
    "mt-bench": "score",
}
BATCH = 256


def load_run(run_dir: Path) -> tuple[RunStore, Suite, Path]:
    store = RunStore(run_dir)
    path = run_dir / "run.json"
    if not path.is_file():
        raise InputError(run_dir, "--run", "a run folder made by harness run (with run.json)")
    run = json.loads(path.read_text(encoding="utf-8"))
    return store, Suite.model_validate(run["suite"]), Path(run.get("suite_file", run_dir / "run.json"))


def label_set_name(judge: str, endpoint: EndpointSpec | None) -> str:
    return f"{judge}@{endpoint.model}" if endpoint is not None else judge


def rejudge(run_dir: Path, judge: str, endpoint: EndpointSpec | None, progress: bool = True) -> Path:
    """Label every sample of the run that `judge` can label; returns the label file."""
    store, suite, suite_file = load_run(run_dir)
    if judge in LLM_JUDGES:
        if endpoint is None:
            raise InputError("--endpoint", "--endpoint", f"an endpoint and --judge-model for judge {judge}")
        suite = suite.model_copy(update={"judges": {**suite.judges, judge: endpoint}})
    tasks = [t for t in suite.tasks if t.type in TASK_TYPES[judge]]
    if not tasks:
        raise InputError(
            "--judge", "--judge", f"a judge for one of the run's task types {[t.type for t in suite.tasks]}"
        )
    out = run_dir / "judges" / f"{label_set_name(judge, endpoint if judge in LLM_JUDGES else None)}.jsonl"
    out.parent.mkdir(exist_ok=True)
    drop_partial_line(out)  # a line cut short by a kill of an earlier re-judging
    done = {_key(r) for r in store.records(out)}
    prompts = {t.name: {p.id: p for p in load_task_prompts(t, suite_file)} for t in tasks}
    samples = {(s["task"], s["condition"], s["id"]): s for s in store.records(store.samples_file)}
    items = []
    for (task, condition, pid), sample in samples.items():
        if task in prompts and _key(sample) not in done:
            prompt = _prompt_of(prompts[task], samples, task, condition, pid)
            if prompt is not None:
                items.append((task, condition, prompt, sample, judge))
    judges = JudgeSet(suite, run_dir / "judge-cache.sqlite")
    from tqdm import tqdm

    with tqdm(total=len(items), desc=f"judge {out.stem}", unit="label", disable=not progress) as bar:
        for start in range(0, len(items), BATCH):
            chunk = items[start : start + BATCH]
            records = judges.judge(chunk)
            for record, item in zip(records, chunk, strict=True):
                record["intervention"] = item[3].get("intervention")
            store.append(out, records)
            bar.update(len(chunk))
    return out


def _prompt_of(
    prompts: dict[str, TaskPrompt],
    samples: dict[tuple[str, str, str], dict[str, Any]],
    task: str,
    condition: str,
    pid: str,
) -> TaskPrompt | None:
    """The prompt a sample answered; an MT-Bench turn 2 is rebuilt with its condition's own turn-1 answer."""
    from harness.suite.task_prompts import mt_bench_turn2

    if pid in prompts:
        return prompts[pid]
    if pid.endswith("/turn2"):
        turn1 = pid.removesuffix("/turn2") + "/turn1"
        first = samples.get((task, condition, turn1))
        if turn1 in prompts and first is not None:
            return mt_bench_turn2(prompts[turn1], first["answer"])
    return None


def _key(record: dict[str, Any]) -> tuple[str, str, str, str | None]:
    return (record["task"], record["condition"], record["id"], record.get("intervention"))


def label_sets(run_dir: Path) -> Iterator[tuple[str, dict[tuple[str, str, str], str]]]:
    """(name, {(task, condition, id): label}) for the run's own judges, then each re-judged set."""
    store = RunStore(run_dir)
    own: dict[str, dict[tuple[str, str, str], str]] = {}
    for r in store.records(store.labels_file):
        own.setdefault(r["judge"], {})[(r["task"], r["condition"], r["id"])] = r["label"]
    yield from sorted(own.items())
    for path in sorted((run_dir / "judges").glob("*.jsonl")):
        labels = {(r["task"], r["condition"], r["id"]): r["label"] for r in store.records(path)}
        yield f"{path.stem} (re-judged)", labels


def agreement(run_dir: Path) -> list[dict[str, Any]]:
    """Per task, per pair of label sets that labelled it: n, accuracy, kappa and the confusion matrix."""
    from judges.agreement import binary_refusal, cohen_kappa

    sets = dict(label_sets(run_dir))
    rows = []
    for (name_a, a), (name_b, b) in itertools.combinations(sets.items(), 2):
        judge_a, judge_b = _judge_of(name_a), _judge_of(name_b)
        if KIND.get(judge_a) != KIND.get(judge_b) or KIND.get(judge_a) == "score":
            continue  # a language and a refusal class say nothing of each other; scores are not classes
        # the 3-class LLM judge and the 2-class string match meet on refused vs not
        collapse = binary_refusal if judge_a != judge_b and KIND.get(judge_a) == "refusal" else None
        for task in sorted({k[0] for k in a} & {k[0] for k in b}):
            left = {f"{k[1]}/{k[2]}": v for k, v in a.items() if k[0] == task}
            right = {f"{k[1]}/{k[2]}": v for k, v in b.items() if k[0] == task}
            try:
                result = cohen_kappa(left, right, collapse)
            except ValueError:  # no item scored by both
                continue
            fold = collapse or (lambda label: label)
            matrix = Counter(
                (fold(left[i]), fold(right[i])) for i in left if i in right and "unscored" not in (left[i], right[i])
            )
            rows.append(
                {
                    "task": task,
                    "a": name_a,
                    "b": name_b,
                    "n": result.n,
                    "accuracy": result.accuracy,
                    "kappa": result.kappa,
                    "collapsed": collapse is not None,
                    "excluded_unscored": result.excluded_unscored,
                    "confusion": [
                        {"a": x, "b": y, "count": matrix.get((x, y), 0)}
                        for x in result.categories
                        for y in result.categories
                    ],
                }
            )
    return rows


def _judge_of(label_set: str) -> str:
    """`refusal-llm@gpt-4o (re-judged)` -> `refusal-llm`."""
    return label_set.split(" ")[0].split("@")[0]


def write_agreement(run_dir: Path) -> tuple[Path, list[dict[str, Any]]]:
    rows = agreement(run_dir)
    path = run_dir / "judge_agreement.json"
    path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return path, rows


def agreement_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| task | judge A | judge B | n | agreement | Cohen's kappa | confusion (A -> B: count) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        confusion = ", ".join(f"{c['a']}->{c['b']}: {c['count']}" for c in r["confusion"])
        scope = " (refused vs not)" if r["collapsed"] else ""
        lines.append(
            f"| {r['task']} | {r['a']} | {r['b']} | {r['n']} | {r['accuracy']:.3f} | {r['kappa']:.3f}{scope} | "
            f"{confusion} |"
        )
    return "\n".join(lines) + "\n"


def make_primary(run_dir: Path, label_file: Path) -> Path:
    """Recompute summary.json and leaderboard.md of a finished run with a re-judged label set as its
    tasks' judge (the experts fTRI chose stay: discovery keeps its judge). The previous summary is kept
    as summary-before-<label set>.json. Nothing is generated: every sample is already there."""
    import shutil

    from harness.run.runner import Runner

    store, suite, suite_file = load_run(run_dir)
    labels = {(r["task"], r["condition"], r["id"]): r["label"] for r in store.records(label_file)}
    backup = run_dir / f"summary-before-{label_file.stem}.json"
    if (run_dir / "summary.json").is_file() and not backup.exists():
        shutil.copy2(run_dir / "summary.json", backup)
    runner = Runner(suite, suite_file, run_dir, resume=True, backend_factory=_no_backend, check_judges=False)
    runner.use_primary_labels(labels)
    runner.run()
    return run_dir / "summary.json"


def _no_backend(*_: Any) -> Any:
    raise InputError("--primary", "--primary", "a finished run (every sample generated): this one still needs a model")

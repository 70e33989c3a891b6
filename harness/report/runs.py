"""Reading stored run folders (results/<run_id>/, written by `harness run`) for reports.

Reports only read what a run stored: summary.json rows, run.json identity, the fTRI ranking and maps,
discovery routing counts and labels. Nothing here calls a model or recomputes a statistic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.analysis.summary import MetricRow, read_summary
from harness.common.errors import InputError
from harness.run.run_store import RunStore

SUMMARY = "summary.json"
RUN = "run.json"


@dataclass(frozen=True)
class RunResults:
    """One run folder: its id (the folder name `harness run` chose), identity and summary rows."""

    run_id: str
    path: Path
    run: dict[str, Any]
    rows: tuple[MetricRow, ...]

    @property
    def suite(self) -> dict[str, Any]:
        suite = self.run.get("suite")
        return suite if isinstance(suite, dict) else {}

    @property
    def suite_name(self) -> str:
        return str(self.suite.get("name", ""))

    @property
    def model(self) -> str:
        """The suite's model as the user named it: `organism`, the model folder's name, or an assembled
        child's recipe and overrides."""
        model = self.suite.get("model", "")
        if isinstance(model, dict):
            from harness.suite.schema import AssembledModelSpec

            return AssembledModelSpec.model_validate(model).name
        name = str(model) or str(self.run.get("model", {}).get("path", "?"))
        return name if name == "organism" else Path(name).name or name

    @property
    def caveats(self) -> list[str]:
        """What a reader of this run's numbers must know (from the stored suite)."""
        evaluation = self.suite.get("evaluation") or {}
        if isinstance(evaluation, dict) and evaluation.get("allow_discovery_overlap"):
            return [
                f"Evaluated on discovery prompts (evaluation.split {evaluation.get('split')!r} overlaps the fTRI "
                "split; allow_discovery_overlap): the targeted effects are optimistic."
            ]
        return []

    @property
    def model_sha(self) -> str:
        return str(self.run.get("model", {}).get("sha256", ""))[:12]

    def tasks_of_type(self, task_type: str) -> list[str]:
        """Task names of one type (refusal, language, qa, mt_bench), in suite order."""
        tasks = self.suite.get("tasks", [])
        return [str(t["name"]) for t in tasks if isinstance(t, dict) and t.get("type") == task_type]

    def judge_of(self, task: str) -> str | None:
        from harness.suite.schema import DEFAULT_JUDGE

        for t in self.suite.get("tasks", []):
            if isinstance(t, dict) and t.get("name") == task:
                judge = t.get("judge") or DEFAULT_JUDGE.get(str(t.get("type")))
                return None if judge is None else str(judge)
        return None

    @property
    def transitions(self) -> list[dict[str, Any]]:
        """A model sweep's transition rows (summary.json's `transitions`), empty for other runs."""
        from harness.analysis.summary import read_transitions

        return read_transitions(self.path / SUMMARY)

    def ftri(self) -> dict[str, Any] | None:
        path = self.path / "ftri.json"
        return _read_json(path) if path.is_file() else None

    def ftri_maps(self) -> dict[str, np.ndarray] | None:
        path = self.path / "ftri_maps.npz"
        if not path.is_file():
            return None
        with np.load(path) as data:
            return {k: np.asarray(data[k]) for k in data.files}

    def discovery_routing(self) -> dict[str, dict[str, np.ndarray]]:
        """Discovery prompt id -> its routing counts (counts_<span>, tokens_<span>), one per prompt."""
        return RunStore(self.path).routing_rows()

    def labels(self, task: str, condition: str, judge: str | None = None) -> dict[str, str]:
        """Sample id -> label for one task and condition (one judge: the task's own by default)."""
        judge = judge or self.judge_of(task)
        path = self.path / "labels.jsonl"
        out: dict[str, str] = {}
        if not path.is_file():
            return out
        with path.open(encoding="utf-8") as source:
            for line in source:
                if not line.endswith("\n"):
                    continue  # a line cut short by a crash (the store drops it on resume too)
                record = json.loads(line)
                if record["task"] == task and record["condition"] == condition and record["judge"] == judge:
                    out[str(record["id"])] = str(record["label"])
        return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(path, "<file>", "a readable JSON file written by harness run", str(err)) from None


def find_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """Each path is a run folder (holds summary.json) or a folder whose sub-folders are run folders."""
    found: list[Path] = []
    for path in paths:
        if (path / SUMMARY).is_file():
            found.append(path)
            continue
        children = sorted(p for p in path.iterdir() if (p / SUMMARY).is_file()) if path.is_dir() else []
        if not children:
            raise InputError(path, "RESULTS_DIR", f"a run folder with {SUMMARY} or a folder of run folders")
        found += children
    return found


def load_run(path: Path) -> RunResults:
    if not (path / RUN).is_file():
        raise InputError(path, RUN, "a run folder written by harness run (run.json missing)")
    rows = read_summary(path / SUMMARY)  # an InputError naming the row when it is not a summary
    run = _read_json(path / RUN)
    if not isinstance(run, dict):
        raise InputError(path / RUN, "<top level>", "a mapping")
    return RunResults(run_id=path.name, path=path, run=run, rows=tuple(rows))


def load_runs(paths: Sequence[Path]) -> list[RunResults]:
    """Every run under the given folders; a run id seen twice gets its parent folder's name prefixed."""
    runs = [load_run(p) for p in find_run_dirs(paths)]
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.run_id] = seen.get(r.run_id, 0) + 1
    return [
        RunResults(f"{r.path.parent.name}/{r.run_id}", r.path, r.run, r.rows) if seen[r.run_id] > 1 else r for r in runs
    ]

"""A model sweep end to end on the organism pair (the shipped recipe tasks/assemblies/organism-pair.yaml,
CI-sized): every child is a condition on the same prompts, its rows carry its lambda, the endpoints
reproduce the parents exactly, transitions sit under `transitions`, models load one at a time in sweep
order, a killed run resumes to the same summary, and the report draws the sweep (in headless Chromium too)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cli import main
from harness.run.runner import Runner, make_backend
from harness.suite.schema import load_suite

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "tasks" / "suites" / "aoe-quickstart.yaml"
GATE = ROOT / "tasks" / "gates" / "aoe-quickstart.yaml"
LAMBDAS = [0, 0.5, 1]

pytestmark = pytest.mark.slow


def reduced_sweep(out: Path) -> Path:
    """The shipped AoE quickstart with three lambdas and CI-sized limits, written beside copies of its files."""
    suite = yaml.safe_load(SHIPPED.read_text())
    suite["assembly"]["lambdas"] = LAMBDAS
    suite["assembly"]["recipe"] = str(ROOT / "tasks" / "assemblies" / "organism-pair.yaml")
    suite["conditions"]["targeted"]["intervention"] = str(
        ROOT / "tasks" / "assemblies" / "organism-refusal-experts.yaml"
    )
    for task in suite["tasks"]:
        task["limit"] = 8 if task["name"] == "sensitive" else 4
    suite["generation"]["max_new_tokens"] = 48
    suite["bootstrap_resamples"] = 200
    path = out / "sweep.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


class Loads:
    """The backend factory, recording which model folder each load was for."""

    def __init__(self) -> None:
        self.folders: list[Path] = []

    def __call__(self, path: Path, suite: Any) -> Any:
        self.folders.append(path)
        return make_backend(path, suite)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Loads]:
    tmp = tmp_path_factory.mktemp("sweep")
    suite_path = reduced_sweep(tmp)
    loads = Loads()
    Runner(load_suite(suite_path), suite_path, tmp / "run", backend_factory=loads).run()
    return suite_path, tmp / "run", loads


def _summary(run: Path) -> dict[str, Any]:
    data = json.loads((run / "summary.json").read_text())
    assert isinstance(data, dict)
    return data


def test_every_child_is_a_condition_and_its_rows_carry_its_lambda(sweep) -> None:
    _, run, _ = sweep
    rows = _summary(run)["rows"]
    for lam in LAMBDAS:
        mine = [r for r in rows if r["condition"].split("|")[0] == f"lambda={lam:g}"]
        assert {r["metric"] for r in mine} >= {"refusal_rate", "trace_rate", "output_tokens_mean", "accuracy"}
        assert all(r["lambda"] == lam for r in mine)
    parents = [r for r in rows if r["condition"].startswith("parent=")]
    assert parents and all("lambda" not in r for r in parents)
    ratios = {r["metric"] for r in rows if r["condition"] == "lambda=0.5"}
    assert {"output_tokens_ratio:parent=organism", "output_tokens_ratio:parent=direct"} <= ratios


def test_the_endpoints_reproduce_the_parents_exactly(sweep) -> None:
    _, run, _ = sweep
    samples: dict[tuple[str, str, str], str] = {}
    for line in (run / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        samples[(s["task"], s["condition"], s["id"])] = s["text"]
    for child, parent in (("lambda=0", "parent=organism"), ("lambda=1", "parent=direct")):
        for suffix in ("", "|targeted"):
            mine = {(t, i): text for (t, c, i), text in samples.items() if c == child + suffix}
            theirs = {(t, i): text for (t, c, i), text in samples.items() if c == parent + suffix}
            assert mine and mine == theirs
    matches = [r for r in _summary(run)["rows"] if r["metric"] == "parent_match"]
    assert len(matches) == 2 * 3 and all(r["value"] == 1.0 for r in matches)


def test_transitions_cover_every_task_metric_and_carried_condition(sweep) -> None:
    _, run, _ = sweep
    found = _summary(run)["transitions"]
    keys = {(t["task"], t["metric"], t["condition"]) for t in found}
    assert ("sensitive", "refusal_rate", "baseline") in keys
    assert ("sensitive", "refusal_rate", "targeted") in keys
    assert ("language", "zh_share", "baseline") in keys
    assert ("generic", "accuracy", "baseline") in keys
    for t in found:
        assert t["kind"] in ("gradual", "sharp", "none")
        assert (t["lambda_start"], t["lambda_end"]) == (0.0, 1.0)
        assert (t["midpoint"] is None) == (t["kind"] == "none")
    trace = next(t for t in found if (t["task"], t["metric"], t["condition"]) == ("generic", "trace_rate", "baseline"))
    assert trace["start"] > 0.5 and trace["end"] < 0.5 and trace["kind"] != "none"  # the sibling writes no trace


def test_models_load_one_at_a_time_in_sweep_order(sweep) -> None:
    _, _, loads = sweep
    names = [
        json.loads((f / "assembly.json").read_text())["recipe"]["groups"] if (f / "assembly.json").exists() else f.name
        for f in loads.folders
    ]
    assert len(loads.folders) == 2 + len(LAMBDAS)  # each model once, baseline and targeted on the same load
    assert names[0] == "checkpoint" and names[-1] == "direct"
    assert [g["all"]["direct"] for g in names[1:-1]] == LAMBDAS


def test_a_killed_sweep_resumes_to_the_same_summary_loading_only_what_is_left(sweep, tmp_path: Path) -> None:
    suite_path, run, _ = sweep
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    lines = (copy / "samples.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in lines if not json.loads(line)["condition"].startswith(("lambda=1", "parent=direct"))]
    (copy / "samples.jsonl").write_text("".join(kept) + lines[-1][: len(lines[-1]) // 2])  # and a torn line
    (copy / "summary.json").unlink()
    loads = Loads()
    Runner(load_suite(suite_path), suite_path, copy, resume=True, backend_factory=loads).run()
    assert [f.name for f in loads.folders][-1] == "direct" and len(loads.folders) == 2
    assert _summary(copy) == _summary(run)


@pytest.fixture(scope="module")
def sweep_report(sweep, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep run's report (markdown and HTML), written once for the tests below."""
    _, run, _ = sweep
    out = tmp_path_factory.mktemp("sweep-report")
    assert main(["report", str(run), "--out", str(out), "--format", "md,html"]) == 0
    return out


def test_the_report_shows_the_sweep_tables_and_plots(sweep, sweep_report: Path) -> None:
    _, run, _ = sweep
    page = (sweep_report / "index.html").read_text()
    assert "Transitions" in page and "Sweep: sensitive" in page and "lambda=0.5" in page
    assert (sweep_report / "plots" / "run" / "sweep_sensitive.png").is_file()
    assert "## Transitions" in (run / "leaderboard.md").read_text()


def _column(page: Any, table: str, header: str) -> int:
    headers = page.evaluate(f"Array.from(document.querySelectorAll('#{table} th')).map(h => h.textContent)")
    return list(headers).index(header)


def _cells(page: Any, table: str, header: str, read: str = "c.textContent") -> list[Any]:
    """One column of a table of the page in its shown order: each cell's text, or what `read` takes of cell c."""
    index = _column(page, table, header)
    rows = f"Array.from(document.querySelectorAll('#{table} tbody tr'))"
    return list(page.evaluate(f"{rows}.map(r => r.cells[{index}]).map(c => {read})"))


def _keys(page: Any, table: str, header: str) -> list[float | None]:
    """A numeric column's sort keys in shown order; None for an empty cell."""
    return [float(k) if k else None for k in _cells(page, table, header, "c.dataset.sort")]


def _sort(page: Any, table: str, header: str) -> None:
    page.locator(f"#{table} th").nth(_column(page, table, header)).click()


def test_the_sweep_report_loads_cleanly_in_chromium_shows_its_tables_and_plots_and_sorts(
    browser_page: Any, sweep, sweep_report: Path
) -> None:
    _, run, _ = sweep
    summary = _summary(run)
    problems: list[str] = []
    browser_page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    browser_page.on("pageerror", lambda e: problems.append(str(e)))
    browser_page.goto((sweep_report / "index.html").as_uri())
    browser_page.wait_for_load_state("load")
    assert problems == []

    conditions = {r["condition"] for r in summary["rows"] if ":seed=" not in r["condition"]}
    assert browser_page.locator("#sweep-sensitive").is_visible()
    models = _cells(browser_page, "sweep-sensitive", "model")
    assert sorted(models) == sorted(conditions)  # a row per model and carried condition
    lambdas = sorted(k for k in _keys(browser_page, "sweep-sensitive", "lambda") if k is not None)
    assert lambdas == sorted(LAMBDAS * 2)  # each child, baseline and targeted; the parents have none
    assert browser_page.locator("#transitions-run").is_visible()
    assert browser_page.locator("#transitions-run tbody tr").count() == len(summary["transitions"])

    images = browser_page.evaluate("Array.from(document.images).map(i => [i.src, i.complete, i.naturalWidth])")
    assert all(done and width > 100 for _, done, width in images), images
    assert len([src for src, _, _ in images if "/sweep_" in src]) == 3  # metrics against lambda, one per task

    _sort(browser_page, "sweep-sensitive", "lambda")
    parents = [None] * (len(conditions) - len(lambdas))
    assert _keys(browser_page, "sweep-sensitive", "lambda") == [*lambdas, *parents]  # empty cells last
    _sort(browser_page, "sweep-sensitive", "lambda")
    assert _keys(browser_page, "sweep-sensitive", "lambda")[: len(lambdas)] == lambdas[::-1]
    _sort(browser_page, "transitions-run", "midpoint lambda [95%]")
    midpoints = _keys(browser_page, "transitions-run", "midpoint lambda [95%]")
    found = [m for m in midpoints if m is not None]
    assert found and midpoints[: len(found)] == sorted(found)


def test_the_shipped_gate_passes_on_the_run(sweep, tmp_path: Path) -> None:
    _, run, _ = sweep
    junit = tmp_path / "gate.xml"
    assert main(["gate", str(run), "--rules", str(GATE), "--junit", str(junit)]) == 0
    assert 'failures="0"' in junit.read_text()


def test_the_shipped_sweep_suites_are_valid_and_name_their_recipes() -> None:
    for name, parent in (("aoe-quickstart", "direct"), ("aoe-paper", "r1")):
        suite = load_suite(ROOT / "tasks" / "suites" / f"{name}.yaml")
        assert suite.assembly is not None and suite.assembly.parent == parent
        assert suite.assembly.recipe.is_file()
        assert suite.assembly.lambdas == [i / 10 for i in range(11)]

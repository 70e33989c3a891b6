"""`harness report`: leaderboards built from stored summary rows (never recomputed) and plots."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness.analysis.summary import MetricRow
from harness.cli import main
from harness.common.errors import InputError
from harness.report import leaderboard_frame, load_runs, parse_formats, write_report
from harness.report.plots import embed, mt_bench_categories, render
from harness.report.runs import RunResults


def test_leaderboard_has_one_row_per_run_and_condition_without_per_seed_rows(two_runs):
    runs = load_runs([two_runs])
    assert [r.run_id for r in runs] == ["demo-a", "demo-b"]
    board = leaderboard_frame(runs)
    assert not board["condition"].str.contains(":seed=").any()
    assert len(board) == len(board[["run", "condition"]].drop_duplicates())
    conditions = list(board[board["run"] == "demo-a"]["condition"])
    assert conditions[:3] == ["baseline", "targeted", "targeted:mask"]
    assert {"random", "random:mask", "stimulate", "k_sweep:k=4", "k_sweep:k=4:random"} <= set(conditions)


def test_leaderboard_cells_are_the_stored_summary_values_and_intervals(demo_run):
    board = leaderboard_frame(load_runs([demo_run])).set_index("condition")
    stored = {(r["task"], r["condition"], r["metric"]): r for r in json.loads((demo_run / "summary.json").read_text())}
    for (task, cond, metric), column in [
        (("sensitive", "targeted", "refusal_rate"), "refusal"),
        (("sensitive", "targeted", "relative_reduction"), "rel_reduction"),
        (("sensitive", "random", "refusal_rate"), "refusal"),
        (("sensitive", "targeted", "aligned_rate"), "aligned"),
        (("language", "targeted", "switch_rate"), "lang_switch"),
    ]:
        row = stored[(task, cond, metric)]
        assert board.loc[cond, column] == pytest.approx(row["value"])
        assert board.loc[cond, f"{column}_lo"] == pytest.approx(row["ci_low"])
        assert board.loc[cond, f"{column}_hi"] == pytest.approx(row["ci_high"])
    targeted = stored[("sensitive", "targeted", "z_vs_random")]
    assert board.loc["targeted", "z_vs_random"] == pytest.approx(targeted["value"])
    assert board.loc["targeted", "pct_vs_random"] == stored[("sensitive", "targeted", "percentile_vs_random")]["value"]
    assert math.isnan(board.loc["baseline", "rel_reduction"])
    assert board.loc["targeted", "n"] == stored[("sensitive", "targeted", "refusal_rate")]["n"]
    assert board.loc["random", "n"] == 6  # random aggregates count seeds


def test_report_cli_writes_every_format_and_the_plots(two_runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(two_runs), "--format", "md,csv,html,parquet", "--out", str(out)]) == 0
    for name in ("leaderboard.md", "leaderboard.csv", "summary.csv", "leaderboard.parquet", "index.html"):
        assert (out / name).is_file(), name
    plots = sorted(p.name for p in (out / "plots" / "demo-a").glob("*.png"))
    assert plots == ["dose_response.png", "ftri_map.png", "refusal_bars.png", "routing_tsne.png"]
    csv = pd.read_csv(out / "leaderboard.csv")
    parquet = pd.read_parquet(out / "leaderboard.parquet")
    assert len(csv) == len(parquet) == 2 * len(csv[csv["run"] == "demo-a"])
    assert "aligned" in csv.columns and "mt_bench" not in csv.columns  # absent metrics leave no empty column
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 2 * len(json.loads((two_runs / "demo-a" / "summary.json").read_text()))
    md = (out / "leaderboard.md").read_text()
    assert re.search(r"^\| demo-a \| \S+ \| targeted \|", md, re.M) and "![fTRI map](plots/demo-a/ftri_map.png)" in md
    page = (out / "index.html").read_text()
    assert 'src="plots/demo-b/dose_response.png"' in page and "http://" not in page and "https://" not in page


def test_report_defaults_to_a_report_folder_inside_the_run(demo_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    assert main(["report", str(run), "--format", "csv"]) == 0
    assert (run / "report" / "leaderboard.csv").is_file()


@pytest.mark.parametrize("argv", [["--format", "md,pdf"], ["--format", ""]])
def test_unknown_format_exits_2(demo_run, tmp_path, argv, capsys):
    assert main(["report", str(demo_run), *argv, "--out", str(tmp_path)]) == 2
    assert "--format" in capsys.readouterr().err


def test_a_folder_without_runs_exits_2_naming_it(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "empty") in err and "RESULTS_DIR" in err


def test_format_list_is_parsed_and_deduplicated():
    assert parse_formats("md, csv,md,HTML") == ["md", "csv", "html"]
    with pytest.raises(InputError):
        parse_formats("xlsx")


def _synthetic_run(tmp_path: Path, rows: list[MetricRow], tasks: list[dict[str, str]]) -> RunResults:
    return RunResults("synthetic", tmp_path, {"suite": {"name": "s", "model": "organism", "tasks": tasks}}, tuple(rows))


def test_mt_bench_columns_and_category_plot_come_from_stored_rows(tmp_path):
    def row(cond: str, metric: str, value: float) -> MetricRow:
        return MetricRow(
            task="mtb", condition=cond, metric=metric, value=value, ci_low=value - 1, ci_high=value + 1, n=16
        )

    rows = [
        row(c, f"mt_bench_score:{cat}", v)
        for c, v in (("baseline", 7.0), ("targeted", 6.5))
        for cat in ("writing", "math")
    ]
    rows += [
        row("baseline", "mt_bench_score", 7.0),
        row("targeted", "mt_bench_score", 6.5),
        row("targeted", "mt_bench_score_delta", -0.5),
        row("random:seed=0", "mt_bench_score:math", 1.0),
    ]
    run = _synthetic_run(tmp_path, rows, [{"name": "mtb", "type": "mt_bench"}])
    board = leaderboard_frame([run]).set_index("condition")
    assert list(board.index) == ["baseline", "targeted"]
    assert board.loc["targeted", "mt_bench"] == 6.5 and board.loc["targeted", "mt_bench_delta"] == -0.5
    assert board.loc["targeted", "n"] == 16
    made = mt_bench_categories(run)
    assert made is not None
    fig, _ = made
    heights = sorted(round(p.get_height(), 2) for p in fig.axes[0].patches)
    assert heights == [6.5, 6.5, 7.0, 7.0]  # the random seed's per-category row is not a bar


def test_a_run_without_ftri_or_k_sweep_gets_only_the_plots_it_has_data_for(tmp_path):
    rows = [
        MetricRow(task="r", condition=c, metric="refusal_rate", value=v, ci_low=0.1, ci_high=0.9, n=10)
        for c, v in (("baseline", 0.8), ("targeted", 0.3))
    ]
    run = _synthetic_run(tmp_path, rows, [{"name": "r", "type": "refusal"}])
    plots = render(run, tmp_path / "plots")
    assert [p.name for p in plots] == ["refusal_bars"]
    written = write_report([run], ["md", "html"], tmp_path / "out")
    assert (tmp_path / "out" / "index.html") in written


def test_routing_embedding_uses_tsne_and_falls_back_to_pca_for_few_prompts():
    import numpy as np

    rng = np.random.default_rng(0)
    many = np.vstack([rng.normal(0, 0.1, (10, 24)), rng.normal(3, 0.1, (10, 24))])
    points, method = embed(many)
    assert method == "t-SNE" and points.shape == (20, 2)
    left, right = points[:10].mean(axis=0), points[10:].mean(axis=0)
    assert np.linalg.norm(left - right) > 3 * max(points[:10].std(), points[10:].std())
    points, method = embed(many[:4])
    assert method == "PCA" and points.shape == (4, 2)


def test_a_run_evaluated_on_its_discovery_prompts_says_so_in_every_report_format(demo_run, tmp_path):
    run_dir = tmp_path / "overlap"
    shutil.copytree(demo_run, run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    run["suite"]["evaluation"] = {"split": "discovery", "allow_discovery_overlap": True}
    (run_dir / "run.json").write_text(json.dumps(run))
    clean = tmp_path / "clean-report"
    assert main(["report", str(demo_run), "--format", "md,html", "--out", str(clean)]) == 0
    assert "Evaluated on discovery prompts" not in (clean / "leaderboard.md").read_text()
    out = tmp_path / "report"
    assert main(["report", str(run_dir), "--format", "md,html", "--out", str(out)]) == 0
    for name in ("leaderboard.md", "index.html"):
        assert "Evaluated on discovery prompts" in (out / name).read_text(), name

from __future__ import annotations

import json
from xml.etree import ElementTree

import pytest

from harness.analysis.summary import MetricRow, write_summary
from harness.cli import main


def _run(tmp_path, name, rows):
    run = tmp_path / name
    run.mkdir()
    write_summary([MetricRow(**r) for r in rows], run / "summary.json")
    return run


ROWS = [
    {"task": "sensitive", "condition": "targeted", "metric": "relative_reduction", "value": 0.55, "n": 40},
    {"task": "sensitive", "condition": "targeted", "metric": "percentile_vs_random", "value": 100.0, "n": 20},
    {"task": "sensitive", "condition": "baseline", "metric": "refusal_rate", "value": 0.80, "n": 40},
    {"task": "sensitive", "condition": "baseline", "metric": "unscored_share", "value": 0.0, "n": 40},
]


def _rules(tmp_path, text):
    path = tmp_path / "gates.yaml"
    path.write_text(text)
    return path


def test_gate_passes_when_every_rule_holds_and_writes_junit(tmp_path, capsys):
    run = _run(tmp_path, "run", ROWS)
    rules = _rules(
        tmp_path,
        """rules:
  - {metric: relative_reduction, task: sensitive, condition: targeted, min: 0.4}
  - {metric: percentile_vs_random, condition: targeted, min: 95}
  - {metric: unscored_share, max: 0.02}
""",
    )
    junit = tmp_path / "gate.xml"
    assert main(["gate", str(run), "--rules", str(rules), "--junit", str(junit)]) == 0
    assert "3 passed, 0 failed" in capsys.readouterr().out
    suite = ElementTree.parse(junit).getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "0"


def test_gate_fails_naming_value_and_threshold(tmp_path, capsys):
    run = _run(tmp_path, "run", ROWS)
    rules = _rules(tmp_path, "rules:\n  - {metric: relative_reduction, condition: targeted, min: 0.6}\n")
    junit = tmp_path / "gate.xml"
    assert main(["gate", str(run), "--rules", str(rules), "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "0.55 < min 0.6" in out
    assert ElementTree.parse(junit).getroot().get("failures") == "1"


def test_a_rule_whose_metric_is_absent_fails(tmp_path, capsys):
    run = _run(tmp_path, "run", ROWS)
    rules = _rules(tmp_path, "rules:\n  - {metric: mt_bench_score_delta, max_drop: 0.2}\n")
    assert main(["gate", str(run), "--rules", str(rules)]) == 1
    assert "metric absent" in capsys.readouterr().out


def test_rise_against_a_baseline_run(tmp_path, capsys):
    old = _run(tmp_path, "old", ROWS)
    new_rows = [dict(r) for r in ROWS]
    new_rows[2]["value"] = 0.9
    new = _run(tmp_path, "new", new_rows)
    rules = _rules(
        tmp_path, "rules:\n  - {metric: refusal_rate, condition: baseline, max_rise_vs_baseline_run: 0.05}\n"
    )
    assert main(["gate", str(new), "--rules", str(rules), "--baseline", str(old)]) == 1
    assert "rose +0.1" in capsys.readouterr().out
    assert main(["gate", str(old), "--rules", str(rules), "--baseline", str(old)]) == 0
    assert main(["gate", str(new), "--rules", str(rules)]) == 1  # no --baseline: cannot pass


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("rules:\n  - {metric: refusal_rate}\n", "rules.0"),
        ("rules:\n  - {metric: refusal_rate, minimum: 3}\n", "rules.0.minimum"),
        ("rules: 3\n", "rules"),
        ("rules: [\n", "<file>"),
        ("rules: []\n", "rules"),
    ],
)
def test_bad_rules_file_exits_2_naming_the_field(tmp_path, capsys, text, field):
    run = _run(tmp_path, "run", ROWS)
    rules = _rules(tmp_path, text)
    assert main(["gate", str(run), "--rules", str(rules)]) == 2
    err = capsys.readouterr().err
    assert str(rules) in err and f"field '{field}'" in err


def test_missing_summary_exits_2(tmp_path, capsys):
    rules = _rules(tmp_path, "rules:\n  - {metric: refusal_rate, max: 1}\n")
    assert main(["gate", str(tmp_path), "--rules", str(rules)]) == 2
    assert "summary.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[{\"task\": \"t\", \"condition\": \"c\", \"metric\"", "<file>"),  # cut off mid-write
        ('{"rows": []}', "<top level>"),
        ('[{"task": "t", "condition": "c", "metric": "m", "value": Infinity, "n": 3}]', "0.value"),
        ('[{"task": "t", "condition": "c", "metric": "m", "value": 0.5}]', "0.n"),
    ],
)
def test_a_corrupt_summary_exits_2_naming_the_row(tmp_path, capsys, text, field):
    (tmp_path / "summary.json").write_text(text)
    rules = _rules(tmp_path, "rules:\n  - {metric: m, max: 1}\n")
    assert main(["gate", str(tmp_path), "--rules", str(rules)]) == 2
    err = capsys.readouterr().err
    assert "summary.json" in err and f"field '{field}'" in err


def test_summary_json_is_strict_json_with_nan_as_null(tmp_path):
    path = tmp_path / "summary.json"
    write_summary([MetricRow(task="t", condition="c", metric="m", value=float("nan"), n=0)], path)
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))[0][
        "value"
    ] is None
    with pytest.raises(ValueError, match="finite"):
        MetricRow(task="t", condition="c", metric="m", value=float("inf"), n=1)

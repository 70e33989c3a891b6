"""`harness ftri` in process: end to end on the shipped organism (generate with routing, judge, fTRI,
generate under the emitted intervention), and bad inputs on small synthetic routing records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.analysis import ftri_files
from harness.cli import main
from harness.mote import RoutingRecord
from harness.mote.intervention import load_intervention
from harness.mote.records import Span
from judges import string_match

ROOT = Path(__file__).resolve().parents[2]
ORGANISM_PROMPTS = ROOT / "tasks" / "organism" / "refusal.jsonl"
PLANTED = ROOT / "harness" / "organism" / "checkpoint" / "planted_refusal.yaml"
# the keys of the ftri.json that `harness run` writes
REPORT_KEYS = {
    "schema_version",
    "task",
    "split",
    "span",
    "score",
    "k",
    "classes",
    "n_prompts",
    "n_tokens",
    "unscored",
    "excluded",
    "stability",
    "top",
}


def _ftri(routing: Path, labels: Path, out: Path, *extra: str) -> list[str]:
    return ["ftri", "--routing", str(routing), "--labels", str(labels), "--out", str(out), *extra]


# -- end to end on the organism -----------------------------------------------------------------


def _discovery(rows: list[dict], kind: str) -> list[dict]:
    return [r for r in rows if r["split"] == "discovery" and r["kind"] == kind]


def _generate(prompts: Path, out: Path) -> list[str]:
    settings = ["--max-tokens", "48", "--batch-size", "32"]
    return ["generate", "--model", "organism", "--prompts", str(prompts), "--out", str(out), *settings]


@pytest.fixture(scope="module")
def organism_run(tmp_path_factory) -> Path:
    """16 sensitive and 16 control discovery prompts: generated with routing, then judged."""
    tmp = tmp_path_factory.mktemp("organism")
    rows = [json.loads(line) for line in ORGANISM_PROMPTS.read_text().splitlines() if line.strip()]
    chosen = [r for kind in ("sensitive", "control") for r in _discovery(rows, kind)[:16]]
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"]}) + "\n" for r in chosen))
    gen = tmp / "gen"
    assert main([*_generate(prompts, gen), "--record-routing"]) == 0
    judge = ["judge", "--judge", "refusal-string", "--in", str(gen / "generations.jsonl")]
    assert main([*judge, "--out", str(tmp / "labels.jsonl")]) == 0
    return tmp


def test_ftri_recovers_the_planted_refusal_experts_and_generate_accepts_the_file(organism_run, tmp_path, capsys):
    run = organism_run
    labels = {json.loads(line)["id"]: json.loads(line)["label"] for line in (run / "labels.jsonl").open()}
    assert 0 < sum(label == "refused" for label in labels.values()) < len(labels)
    out = tmp_path / "experts.yaml"
    capsys.readouterr()
    argv = _ftri(run / "gen" / "routing", run / "labels.jsonl", out, "--target", "refused", "--k", "10")
    assert main([*argv, "--model", "organism", "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert "fTRI top 10" in printed and "unscored 0" in printed

    emitted = load_intervention(out)
    planted = load_intervention(PLANTED).experts
    assert emitted.kind == "suppress" and emitted.mode == "drop" and len(emitted.experts) == 10
    assert len(set(emitted.experts) & set(planted)) >= 8
    assert emitted.provenance["method"] == "ftri" and emitted.provenance["target_labels"] == ["refused"]
    assert emitted.provenance["span"] == "prompt" and emitted.provenance["score"] == "mean_diff"
    report = json.loads((tmp_path / "experts.ftri.json").read_text())
    assert set(report) >= REPORT_KEYS
    assert report["n_prompts"]["target"] + report["n_prompts"]["other"] == len(labels)
    assert {(r["layer"], r["expert"]) for r in report["top"][:10]} == set(emitted.experts)

    # the emitted file drives generate: the prompts the organism refused are no longer refused
    refused = [pid for pid, label in labels.items() if label == "refused"]
    gen_lines = {json.loads(line)["id"]: line for line in (run / "prompts.jsonl").open()}
    prompts = tmp_path / "refused.jsonl"
    prompts.write_text("".join(gen_lines[pid] for pid in refused))
    gen = tmp_path / "suppressed"
    assert main([*_generate(prompts, gen), "--intervention", str(out)]) == 0
    lines = [json.loads(line) for line in (gen / "generations.jsonl").open()]
    assert {line["intervention"] for line in lines} == {emitted.fingerprint()}
    assert all(string_match.judge(line["id"], line["answer"]).label != "refused" for line in lines)


# -- bad inputs, on synthetic records -------------------------------------------------------------

LAYERS = [0, 1, 2]
N_EXPERTS = 8


def _record(target: bool, prompt_tokens: int = 6, think_tokens: int = 0) -> RoutingRecord:
    tokens = prompt_tokens + think_tokens
    ids = np.zeros((tokens, len(LAYERS), 2), dtype=np.int32)
    ids[:, :, 0], ids[:, :, 1] = 5, 6
    if target:
        ids[:, 1, 0] = 3
    span = np.array([Span.PROMPT] * prompt_tokens + [Span.THINK] * think_tokens, dtype=np.int8)
    return RoutingRecord(ids, np.ones(ids.shape, np.float32), np.array(LAYERS, np.int32), span)


@pytest.fixture()
def synthetic(tmp_path) -> tuple[Path, Path]:
    """routing/ with 4 target and 4 other records, and matching labels (refused / complied)."""
    routing = tmp_path / "gen" / "routing"
    lines = []
    for i in range(8):
        target = i % 2 == 0
        _record(target).save(routing / f"p{i}.npz")
        lines.append({"id": f"p{i}", "label": "refused" if target else "complied", "text": "..."})
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return routing, labels


def test_synthetic_records_rank_the_planted_expert_first_and_report_unused_labels(synthetic, tmp_path, capsys):
    routing, labels = synthetic
    extra = [{"id": "u1", "label": "unscored"}, {"id": "u2", "label": "unscored"}, {"id": "x", "label": "aligned"}]
    with labels.open("a") as f:
        f.writelines(json.dumps(line) + "\n" for line in extra)
    _record(False).save(routing / "nolabel.npz")
    out = tmp_path / "out" / "experts.json"
    argv = _ftri(routing, labels, out, "--other", "complied", "--k", "1", "--n-experts", str(N_EXPERTS))
    assert main([*argv, "--always-on-threshold", "0.9", "--bootstrap", "5", "--mode", "mask"]) == 0
    printed = capsys.readouterr().out
    assert "unscored 2" in printed and "aligned 1" in printed and "without a label 1" in printed
    emitted = load_intervention(out)
    assert emitted.experts.to_mapping() == {1: [3]} and emitted.mode == "mask"
    report = json.loads((tmp_path / "out" / "experts.ftri.json").read_text())
    assert set(report) >= REPORT_KEYS
    assert report["unscored"] == 2 and report["n_prompts"] == {"target": 4, "other": 4}
    assert report["classes"] == {"target": ["refused"], "other": ["complied"]}
    assert report["excluded"] == {"0": [5, 6], "1": [6], "2": [5, 6]}  # always-on at 0.9
    assert report["not_used"] == {"neither_class": 1, "records_without_label": 1}


def test_runner_and_cli_write_the_same_report_schema(synthetic, tmp_path):
    """Both write through ftri_files: the runner's keys are exactly the common ones."""
    from harness.analysis import ftri

    records = {"target": _record(True), "other": _record(False)}
    prompts = [ftri.PromptCounts(r.counts(N_EXPERTS, Span.PROMPT), r.n_tokens, cls) for cls, r in records.items()]
    result = ftri.rank(prompts, LAYERS, "target", "other")
    setup = ftri_files.FtriSetup(span="prompt", k=1, target_labels=["refused"], task="t", split="discovery")
    assert set(ftri_files.ftri_report(result, setup, unscored=0)) == REPORT_KEYS


def _labels_file(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "bad-labels.jsonl"
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("content", "field", "message"),
    [
        ('{"id": "p0", "label": "refused"}\nnot json\n', "line 2", "a JSON object"),
        ('{"id": "p0"}\n', "line 1: label", "a label string"),
        ('{"label": "refused"}\n', "line 1: id", "a non-empty string or integer id"),
        ('{"id": "p0", "label": "refused"}\n{"id": "p0", "label": "complied"}\n', "line 2: id", "unique"),
        ("", "<file>", "at least one line"),
        ('{"id": "p0", "label": "refused"}\n{"id": "p2", "label": "refused"}\n', "label", "both classes"),
        ('{"id": "p0", "label": "unscored"}\n{"id": "p1", "label": "complied"}\n', "label", "both classes"),
    ],
)
def test_bad_label_file_exits_2_naming_file_and_field(synthetic, tmp_path, capsys, content, field, message):
    routing, _ = synthetic
    labels = _labels_file(tmp_path, content)
    out = tmp_path / "experts.yaml"
    assert main([*_ftri(routing, labels, out), "--n-experts", str(N_EXPERTS)]) == 2
    err = capsys.readouterr().err
    assert f"{labels}: field '{field}'" in err and message in err
    assert not out.exists()


def test_labelled_ids_without_routing_records_exit_2_listing_the_first_few(synthetic, tmp_path, capsys):
    routing, labels = synthetic
    for i in (1, 2, 3, 4, 5, 6):
        (routing / f"p{i}.npz").unlink()
    out = tmp_path / "experts.yaml"
    assert main([*_ftri(routing, labels, out), "--n-experts", str(N_EXPERTS)]) == 2
    err = capsys.readouterr().err
    assert f"{labels}: field 'id'" in err and "6 of 8 have none" in err
    assert "'p1', 'p2', 'p3', 'p4', 'p5'" in err and "p6" not in err
    assert not out.exists()


def test_missing_routing_folder_and_labels_file_exit_2(synthetic, tmp_path, capsys):
    routing, labels = synthetic
    out = tmp_path / "experts.yaml"
    assert main([*_ftri(tmp_path / "nowhere", labels, out), "--n-experts", "8"]) == 2
    assert f"{tmp_path / 'nowhere'}: field '--routing'" in capsys.readouterr().err
    assert main([*_ftri(routing, tmp_path / "none.jsonl", out), "--n-experts", "8"]) == 2
    assert f"{tmp_path / 'none.jsonl'}: field '--labels'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "source", "message"),
    [
        (["--k", "0"], "--k", "field 'k': expected Input should be greater than or equal to 1"),
        (["--bootstrap", "-1"], "--bootstrap", "field 'bootstrap'"),
        (["--always-on-threshold", "2"], "--always-on-threshold", "less than or equal to 1"),
        (["--always-on-threshold", "often"], "--always-on-threshold", "a valid number"),
        (["--n-experts", "0"], "--n-experts", "an integer >= 1"),
    ],
)
def test_bad_options_exit_2_naming_the_option(synthetic, tmp_path, capsys, extra, source, message):
    routing, labels = synthetic
    argv = _ftri(routing, labels, tmp_path / "experts.yaml")
    if "--n-experts" not in extra:
        extra = [*extra, "--n-experts", str(N_EXPERTS)]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"harness ftri: error: {source}:") and message in err


def test_exclude_file_out_of_range_exits_2_naming_it(synthetic, tmp_path, capsys):
    routing, labels = synthetic
    exclude = tmp_path / "exclude.yaml"
    exclude.write_text("kind: suppress\nexperts: {1: [9]}\n")
    argv = _ftri(routing, labels, tmp_path / "experts.yaml", "--exclude", str(exclude))
    assert main([*argv, "--n-experts", str(N_EXPERTS)]) == 2
    err = capsys.readouterr().err
    assert f"{exclude}: field 'experts.1': expected expert ids in 0..7" in err


def test_records_that_do_not_fit_the_model_exit_2_naming_the_record(synthetic, tmp_path, capsys):
    routing, labels = synthetic
    out = tmp_path / "experts.yaml"
    # the organism's MoE layers are 1..5; these records have 0..2
    assert main([*_ftri(routing, labels, out), "--model", "organism"]) == 2
    err = capsys.readouterr().err
    assert f"{routing / 'p0.npz'}: field 'layers': expected the MoE layers" in err
    # expert 6 is routed, but only 4 experts were declared
    assert main([*_ftri(routing, labels, out), "--n-experts", "4"]) == 2
    assert f"{routing / 'p0.npz'}: field 'topk_ids (layer 0)': expected expert ids in 0..3" in capsys.readouterr().err
    (routing / "p0.npz").write_bytes(b"not a zip")
    assert main([*_ftri(routing, labels, out), "--n-experts", "8"]) == 2
    assert f"{routing / 'p0.npz'}: field '<file>'" in capsys.readouterr().err
    assert not out.exists()


def test_a_span_without_tokens_exits_2(synthetic, tmp_path, capsys):
    routing, labels = synthetic
    assert main([*_ftri(routing, labels, tmp_path / "e.yaml", "--span", "think"), "--n-experts", "8"]) == 2
    assert f"{routing}: field 'span'" in capsys.readouterr().err


def test_bad_out_name_exits_2(synthetic, tmp_path, capsys):
    routing, labels = synthetic
    assert main([*_ftri(routing, labels, tmp_path / "experts.txt"), "--n-experts", "8"]) == 2
    assert "--out: field 'out'" in capsys.readouterr().err


def test_model_or_n_experts_is_required(synthetic, tmp_path):
    routing, labels = synthetic
    with pytest.raises(SystemExit) as exc:
        main(_ftri(routing, labels, tmp_path / "experts.yaml"))
    assert exc.value.code == 2

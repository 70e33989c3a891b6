"""`harness generate` end to end on a tiny model, in process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.cli import main
from harness.models.tiny import FAMILY_CONFIGS
from harness.mote import Intervention, RoutingRecord

FAMILIES = sorted(FAMILY_CONFIGS)

PROMPTS = [
    {"id": "a", "prompt": "What happened in the city last year?"},
    {"id": "b", "messages": [{"role": "user", "content": "Explain how experts route tokens."}]},
]


@pytest.fixture()
def files(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    iv = tmp_path / "iv.yaml"
    iv.write_text("kind: suppress\nmode: drop\nexperts: {0: [1], 2: [3, 4]}\n")
    return prompts, iv


def _args(model, prompts, out, *extra):
    return [
        "generate",
        "--model",
        str(model),
        "--backend",
        "hf",
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--max-tokens",
        "8",
        *extra,
    ]


def test_generate_writes_generations_and_routing_records_that_honour_the_intervention(tiny_model_dir, files, tmp_path):
    prompts, iv = files
    out = tmp_path / "out"
    assert main(_args(tiny_model_dir("qwen3_moe"), prompts, out, "--intervention", str(iv), "--record-routing")) == 0
    lines = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ["a", "b"]
    fingerprint = Intervention.suppress({0: [1], 2: [3, 4]}).fingerprint()
    for line in lines:
        assert set(line) >= {"id", "text", "think", "answer", "intervention"}
        assert line["intervention"] == fingerprint
        record = RoutingRecord.load(out / "routing" / f"{line['id']}.npz")
        assert record.layers.tolist() == [0, 1, 2]
        assert record.topk_ids.shape[1:] == (3, 2) and record.span.shape == (record.topk_ids.shape[0],)
        assert not np.isin(record.topk_ids[:, 0], [1]).any()
        assert not np.isin(record.topk_ids[:, 2], [3, 4]).any()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["drop", "mask", "stimulate"])
def test_generate_honours_each_intervention_on_every_family(tiny_model_dir, files, tmp_path, family, kind):
    from harness.backends.hf_discovery import inspect_model

    model = tiny_model_dir(family)
    first, last = inspect_model(model).moe_layers[0], inspect_model(model).moe_layers[-1]
    experts = {first: [1], last: [2]}
    iv = tmp_path / "iv.yaml"
    body = "kind: stimulate" if kind == "stimulate" else f"kind: suppress\nmode: {kind}"
    iv.write_text(f"{body}\nexperts: {json.dumps({str(k): v for k, v in experts.items()})}\n")
    out = tmp_path / "out"
    prompts, _ = files
    assert main(_args(model, prompts, out, "--intervention", str(iv), "--record-routing")) == 0
    for line in (out / "generations.jsonl").read_text().splitlines():
        record = RoutingRecord.load(out / "routing" / f"{json.loads(line)['id']}.npz")
        for layer, ids in experts.items():
            column = record.topk_ids[:, record.layers.tolist().index(layer)]
            if kind == "stimulate":
                assert (column == ids[0]).any(axis=-1).all(), (layer, ids)
            else:
                assert not np.isin(column, ids).any(), (layer, ids)


def test_a_generation_cut_short_by_a_kill_is_generated_again_on_rerun(tiny_model_dir, files, tmp_path):
    prompts, _ = files
    model, out = tiny_model_dir("qwen3_moe"), tmp_path / "out"
    assert main(_args(model, prompts, out)) == 0
    whole = (out / "generations.jsonl").read_text()
    first, second = whole.splitlines(keepends=True)
    (out / "generations.jsonl").write_text(first + second[: len(second) // 2])  # kill -9 mid-write
    assert main(_args(model, prompts, out)) == 0
    assert (out / "generations.jsonl").read_text() == whole


def test_rerun_resumes_and_a_different_intervention_is_refused(tiny_model_dir, files, tmp_path, capsys):
    prompts, iv = files
    model, out = tiny_model_dir("qwen3_moe"), tmp_path / "out"
    assert main(_args(model, prompts, out)) == 0
    before = (out / "generations.jsonl").read_text()
    assert main(_args(model, prompts, out)) == 0
    assert "already" in capsys.readouterr().out
    assert main(_args(model, prompts, out, "--intervention", str(iv))) == 2
    assert (out / "generations.jsonl").read_text() == before  # nothing lost


@pytest.mark.parametrize(
    ("intervention", "message"),
    [
        ("kind: suppress\nexperts: {7: [1]}\n", "field 'experts.7': expected an MoE layer index"),
        ("kind: suppress\nexperts: {1: [8]}\n", "field 'experts.1': expected expert ids in 0..7"),
        ("kind: stimulate\nexperts: {1: [0, 1, 2]}\n", "at most top_k=2"),
        ("kind: silence\nexperts: {1: [1]}\n", "field 'kind'"),
        ("kind: suppress\nmode: zero\nexperts: {1: [1]}\n", "field 'mode'"),
        ("kind: suppress\nexperts: [1, 2]\n", "field 'experts'"),
    ],
)
def test_bad_intervention_exits_2_naming_file_and_field_before_loading(
    tiny_model_dir, files, tmp_path, capsys, monkeypatch, intervention, message
):
    from harness.backends import hf

    def no_loading(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(hf.HFBackend, "__init__", no_loading)
    prompts, _ = files
    bad = tmp_path / "bad.yaml"
    bad.write_text(intervention)
    out = tmp_path / "out"
    assert main(_args(tiny_model_dir("qwen3_moe"), prompts, out, "--intervention", str(bad))) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": "a", "prompt": "x"}\nnot json\n', "line 2"),
        ('{"prompt": "x"}\n', "line 1: id"),
        ('{"id": "a", "prompt": "x", "messages": []}\n', "exactly one of"),
        ('{"id": "a", "messages": [{"role": "robot", "content": "x"}]}\n', "messages[0]"),
        ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "unique"),
        ("", "at least one prompt"),
        ('{"id": "../escape", "prompt": "x"}\n', "usable as a file name"),
        ('{"id": "a/b", "prompt": "x"}\n', "usable as a file name"),
    ],
)
def test_bad_prompt_file_exits_2_with_line_and_field(tiny_model_dir, tmp_path, capsys, content, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(content)
    assert main(_args(tiny_model_dir("qwen3_moe"), prompts, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert str(prompts) in err and message in err


def test_missing_model_folder_exits_2(files, tmp_path, capsys):
    prompts, _ = files
    assert main(_args(tmp_path / "no-model", prompts, tmp_path / "out")) == 2
    assert "config.json" in capsys.readouterr().err


def test_a_malformed_model_config_exits_2_naming_it(files, tmp_path, capsys):
    prompts, _ = files
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen3_moe", ')
    assert main(_args(model, prompts, tmp_path / "out")) == 2
    assert str(model / "config.json") in capsys.readouterr().err

"""Children built tensor by tensor: exact where they should be (one-hot lambdas copy a parent's bytes,
FP8 included; lambda 0.5 is the float32 mean, then cast), FP8 requantised in DeepSeek's layout or written
in bf16, the distance threshold, assembly.json, and row chunks that change nothing."""

from __future__ import annotations

import gc
import json
import sys

import pytest
import torch
from assembly_files import assembly, raw, tensors, write_recipe

from harness.assembly import assemble, load_recipe, reads
from harness.assembly.checkpoint import INDEX
from harness.assembly.fp8 import dequantize
from harness.assembly.process import no_collection


def _build(tmp_path, text, name="child", **kwargs):
    recipe_path = write_recipe(tmp_path, text)
    return assemble(load_recipe(recipe_path), tmp_path / name, source=recipe_path, progress=False, **kwargs)


def test_one_hot_lambda_copies_each_parents_bytes_group_by_group(parents, tmp_path):
    a, b = parents("qwen3_moe")
    _build(tmp_path, f"parents: {{a: {a}, b: {b}}}\ngroups: {{routed_experts: {{b: 1.0}}}}\n")
    child, pa, pb = tensors(tmp_path / "child"), tensors(a), tensors(b)
    record = assembly(tmp_path / "child")["tensors"]
    assert set(child) == set(pa)
    for name, value in child.items():
        source = pb if record[name]["group"] == "routed_experts" else pa
        assert raw(value) == raw(source[name]), name
    experts = [r for r in record.values() if r["group"] == "routed_experts"]
    assert experts and all(r["merged"] and r["distance"] > 0 and r["lambdas"] == {"a": 0.0, "b": 1.0} for r in experts)


def test_half_lambda_is_the_float32_mean_then_cast(parents, tmp_path):
    a, b = parents("deepseek_v3")
    _build(tmp_path, f"parents: {{a: {a}, b: {b}}}\ngroups: {{all: {{b: 0.5}}}}\n")
    child, pa, pb = tensors(tmp_path / "child"), tensors(a), tensors(b)
    for name, value in child.items():
        mean = ((pa[name].to(torch.float32) + pb[name].to(torch.float32)) / 2).to(pa[name].dtype)
        assert torch.equal(value, mean), name
    config = json.loads((tmp_path / "child" / "config.json").read_text())
    assert config == json.loads((a / "config.json").read_text())
    assert (tmp_path / "child" / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()
    index = json.loads((tmp_path / "child" / INDEX).read_text())
    assert set(index["weight_map"]) == set(child)


def test_fp8_one_hot_is_byte_identical_and_a_mix_is_requantised_in_the_same_layout(parents, tmp_path):
    a, b = parents("deepseek_v3", fp8=True)
    text = f"parents: {{v3: {a}, r1: {b}}}\ngroups: {{routed_experts: {{r1: 1.0}}, attention: {{r1: 0.5}}}}\n"
    _build(tmp_path, text)
    child, pa, pb = tensors(tmp_path / "child"), tensors(a), tensors(b)
    record = assembly(tmp_path / "child")["tensors"]
    assert {n: t.dtype for n, t in child.items()} == {n: t.dtype for n, t in pa.items()}
    assert any(t.dtype == torch.float8_e4m3fn for t in child.values())
    for name, value in child.items():
        group = record[name]["group"]
        if group == "routed_experts":
            assert raw(value) == raw(pb[name]), name
        elif group != "attention":
            assert raw(value) == raw(pa[name]), name
        elif value.dtype == torch.float8_e4m3fn:  # requantised: close to the mean of the dequantised parents
            scale = name + "_scale_inv"
            got = dequantize(value, child[scale], (128, 128))
            mean = (dequantize(pa[name], pa[scale], (128, 128)) + dequantize(pb[name], pb[scale], (128, 128))) / 2
            assert torch.allclose(got, mean, rtol=0.07, atol=1e-3 * float(mean.abs().max())), name
    assert json.loads((tmp_path / "child" / "config.json").read_text())["quantization_config"]["quant_method"] == "fp8"


def test_bfloat16_child_of_fp8_parents_drops_the_quantization_config_and_loads(parents, tmp_path):
    from harness.backends.base import GenerationRequest, GenerationSettings
    from harness.backends.hf import HFBackend

    a, b = parents("deepseek_v3", fp8=True)
    _build(tmp_path, f"parents: {{v3: {a}, r1: {b}}}\ngroups: {{routed_experts: {{r1: 0.5}}}}\ndtype: bfloat16\n")
    child = tensors(tmp_path / "child")
    assert all(t.dtype == torch.bfloat16 for t in child.values())
    assert not any(name.endswith("_scale_inv") for name in child)
    config = json.loads((tmp_path / "child" / "config.json").read_text())
    assert "quantization_config" not in config
    backend = HFBackend(tmp_path / "child", dtype="bfloat16")
    (result,) = backend.generate([GenerationRequest(id="x", prompt="hello")], GenerationSettings(max_new_tokens=4))
    assert result.n_generated_tokens > 0


def test_threshold_keeps_the_base_where_the_parents_are_close(parents, tmp_path):
    a, b = parents("qwen3_moe")
    _build(tmp_path, f"parents: {{a: {a}, b: {b}}}\ngroups: {{all: {{b: 0.5}}}}\nthreshold: 1.0e9\n")
    child, pa = tensors(tmp_path / "child"), tensors(a)
    assert all(raw(child[n]) == raw(pa[n]) for n in child)
    records = assembly(tmp_path / "child")["tensors"].values()
    assert all(not r["merged"] and r["distance"] is not None for r in records)
    assert any(r["distance"] > 0 for r in records)


def test_assembly_json_names_the_recipe_the_parents_and_every_tensor(parents, tmp_path):
    a, b = parents("qwen3_moe")
    _build(tmp_path, f"parents: {{a: {a}, b: {b}}}\ngroups: {{router: {{b: 0.25}}}}\n")
    data = assembly(tmp_path / "child")
    assert data["recipe"]["groups"] == {"router": {"b": 0.25}}
    assert [p["name"] for p in data["parents"]] == ["a", "b"]
    assert all(len(s["header_sha256"]) == 64 for p in data["parents"] for s in p["shards"])
    groups = {row["group"]: row for row in data["groups"]}
    assert groups["router"]["action"] == "merge" and groups["attention"]["action"] == "keep"
    assert set(data["tensors"]) == set(tensors(a))
    assert not (tmp_path / "child" / "plan.json").exists() and not (tmp_path / "child" / "records").exists()


MIXED_AND_ONE_HOT = "{all: {b: 0.3}, routed_experts: {b: 1.0}}"
KEPT_AND_MIXED = "{routed_experts: {b: 0.3}}"  # every other group kept from the base (converted if dtype says)


@pytest.mark.parametrize(
    ("fp8", "groups", "dtype"),
    [
        (False, MIXED_AND_ONE_HOT, "auto"),
        (True, MIXED_AND_ONE_HOT, "auto"),
        (False, KEPT_AND_MIXED, "bfloat16"),  # the tiny parents are float32
        (True, KEPT_AND_MIXED, "bfloat16"),
        (True, MIXED_AND_ONE_HOT, "bfloat16"),
    ],
)
def test_row_chunks_give_the_same_child_as_whole_tensors(parents, tmp_path, monkeypatch, fp8, groups, dtype):
    a, b = parents("deepseek_v3", fp8=fp8, block=32)  # FP8 weights of several 32-row blocks
    text = f"parents: {{a: {a}, b: {b}}}\ngroups: {groups}\ndtype: {dtype}\n"
    _build(tmp_path, text, name="whole")
    monkeypatch.setattr(reads, "CHUNK_ELEMENTS", 7)  # a few rows per chunk (one block row for FP8)
    _build(tmp_path, text, name="chunked")
    whole, chunked = tensors(tmp_path / "whole"), tensors(tmp_path / "chunked")
    assert all(raw(whole[n]) == raw(chunked[n]) for n in whole)


def test_without_the_kernels_file_to_file_copy_kept_tensors_go_through_memory_to_the_same_bytes(
    parents, tmp_path, monkeypatch
):
    a, b = parents("qwen3_moe")
    text = f"parents: {{a: {a}, b: {b}}}\ngroups: {{routed_experts: {{b: 0.5}}}}\n"
    _build(tmp_path, text, name="kernel")
    monkeypatch.delattr("os.copy_file_range")
    monkeypatch.setattr("harness.assembly.writer.COPY_PIECE", 1000)  # several pieces per tensor
    _build(tmp_path, text, name="memory")
    kernel, memory, base = tensors(tmp_path / "kernel"), tensors(tmp_path / "memory"), tensors(a)
    assert all(raw(kernel[n]) == raw(memory[n]) for n in kernel)
    kept = [n for n, r in assembly(tmp_path / "memory")["tensors"].items() if not r["merged"]]
    assert kept and all(raw(memory[n]) == raw(base[n]) for n in kept)


def test_written_bytes_are_handed_to_the_disk_as_the_build_goes_and_the_child_is_the_same(
    parents, tmp_path, monkeypatch
):
    from harness.assembly import writer

    a, b = parents("qwen3_moe")
    text = f"parents: {{a: {a}, b: {b}}}\ngroups: {{routed_experts: {{b: 0.5}}, attention: {{b: 1}}}}\n"
    _build(tmp_path, text, name="once")
    real, handed = writer.start_writeback, []
    monkeypatch.setattr(writer, "WRITEBACK_BYTES", 1)  # after every write
    monkeypatch.setattr(writer, "start_writeback", lambda fd: handed.append(real(fd)) or True)
    _build(tmp_path, text, name="handed")
    once, handed_out = tensors(tmp_path / "once"), tensors(tmp_path / "handed")
    assert len(handed) >= len(once)
    assert all(handed) or not sys.platform.startswith("linux")  # Linux has sync_file_range
    assert all(raw(once[n]) == raw(handed_out[n]) for n in once)


def test_no_collection_turns_the_collector_off_inside_and_back_as_it_was():
    assert gc.isenabled()
    with no_collection():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with no_collection():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()

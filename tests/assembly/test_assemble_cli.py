"""`harness assemble` as a user meets it: the placement printed, --set, a bad recipe or parent refused with
exit 2 before anything is written (naming the file and the tensor), no half child after an interruption,
--resume keeping the finished shards, and the child accepted wherever a model is."""

from __future__ import annotations

import json

import pytest
from assembly_files import copy_parent, raw, tensors, write_recipe
from safetensors.torch import load_file, save_file

from harness.assembly import build as build_module
from harness.cli import main


def test_placement_is_printed_and_set_overrides_one_lambda(parents, tmp_path, capsys):
    a, b = parents("qwen3_moe")
    recipe = write_recipe(tmp_path, f"parents: {{a: {a}, b: {b}}}\ngroups: {{routed_experts: {{b: 1.0}}}}\n")
    out = tmp_path / "child"
    assert main(["assemble", str(recipe), "--out", str(out), "--set", "attention.b=0.5", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for group in ("routed_experts", "attention", "router", "embeddings", "lm_head", "norms"):
        assert group in printed
    assert "merge" in printed and "keep" in printed and "wrote" in printed
    record = json.loads((out / "assembly.json").read_text())
    assert record["recipe"]["groups"] == {"routed_experts": {"b": 1.0}, "attention": {"b": 0.5}}


def _tamper_missing_tensor(folder):
    shard = next(folder.glob("*.safetensors"))
    data = load_file(str(shard))
    name = next(n for n in data if ".experts." in n)
    del data[name]
    save_file(data, str(shard), metadata={"format": "pt"})
    return name


def _tamper_shape(folder):
    shard = next(folder.glob("*.safetensors"))
    data = load_file(str(shard))
    name = next(n for n in data if n.endswith("q_proj.weight"))
    data[name] = data[name][:-1]
    save_file(data, str(shard), metadata={"format": "pt"})
    return name


def _tamper_missing_shard(folder):
    shard = next(folder.glob("*.safetensors"))
    names = list(load_file(str(shard)))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: "model-00002-of-00002.safetensors" for n in names}})
    )
    return "model-00002-of-00002.safetensors"


def _tamper_config(folder):
    config = json.loads((folder / "config.json").read_text())
    config["num_experts_per_tok"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    return "num_experts_per_tok"


@pytest.mark.parametrize(
    ("tamper", "groups"),
    [
        (_tamper_missing_tensor, "{all: {b: 0.5}}"),
        (_tamper_shape, "{all: {b: 0.5}}"),
        (_tamper_missing_shard, "{all: {b: 0.5}}"),
        (_tamper_config, "{all: {b: 0.5}}"),
        (None, "{all: {b: 1.5}}"),
        (None, "{all: {b: -0.1}}"),
        (None, "{all: {b: 0.5, c: 0.6}}"),
        (None, "{everything: {b: 0.5}}"),
        (None, "{all: {zz: 0.5}}"),
        (None, "{all: {a: 0.5}}"),
        ("mixtral", "{all: {b: 0.5}}"),
    ],
)
def test_bad_recipes_and_parents_are_refused_before_anything_is_written(parents, tmp_path, capsys, tamper, groups):
    a, b = parents("qwen3_moe")
    c = parents("qwen3_moe")[1]
    if tamper == "mixtral":
        b, expected = parents("mixtral")[1], "model_type"
    elif tamper is not None:
        b = copy_parent(b, tmp_path / "b")
        expected = tamper(b)
    else:
        expected = "groups"
    recipe = write_recipe(tmp_path, f"parents: {{a: {a}, b: {b}, c: {c}}}\ngroups: {groups}\n")
    out = tmp_path / "child"
    assert main(["assemble", str(recipe), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and expected in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "child.partial").exists()


def test_an_existing_output_folder_is_refused(parents, tmp_path, capsys):
    a, b = parents("qwen3_moe")
    recipe = write_recipe(tmp_path, f"parents: {{a: {a}, b: {b}}}\n")
    (tmp_path / "child").mkdir()
    assert main(["assemble", str(recipe), "--out", str(tmp_path / "child")]) == 2
    assert "--out" in capsys.readouterr().err


def _sharded_pair(parents, tmp_path):
    """The parents re-saved in three shards each."""
    from transformers import AutoModelForCausalLM

    pair = []
    for source in parents("qwen3_moe"):
        model = AutoModelForCausalLM.from_pretrained(str(source))
        target = copy_parent(source, tmp_path / f"sharded-{source.name}")
        for old in target.glob("*.safetensors"):
            old.unlink()
        model.save_pretrained(str(target), max_shard_size="120KB")
        pair.append(target)
    assert len(list(pair[0].glob("*.safetensors"))) >= 3
    return pair


def test_an_interrupted_build_leaves_no_child_and_resume_keeps_finished_shards(parents, tmp_path, monkeypatch):
    a, b = _sharded_pair(parents, tmp_path)
    recipe = write_recipe(tmp_path, f"parents: {{a: {a}, b: {b}}}\ngroups: {{all: {{b: 0.4}}}}\n")
    out = tmp_path / "child"
    real = build_module._build_shard
    built: list[int] = []

    def failing(plan, index, partial, bar, cached=None):
        if index == 1 and not built.count(-1):
            built.append(-1)
            raise KeyboardInterrupt
        built.append(index)
        return real(plan, index, partial, bar, cached)

    monkeypatch.setattr(build_module, "_build_shard", failing)
    with pytest.raises(KeyboardInterrupt):
        main(["assemble", str(recipe), "--out", str(out), "--no-progress"])
    n = len(list(a.glob("*.safetensors")))
    assert not out.exists() and (tmp_path / "child.partial" / f"model-00001-of-{n:05d}.safetensors").is_file()
    assert main(["assemble", str(recipe), "--out", str(out), "--no-progress"]) == 2  # needs --resume
    assert main(["assemble", str(recipe), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert built == [0, -1, *range(1, n)]  # shard 0 was not built again
    monkeypatch.setattr(build_module, "_build_shard", real)
    assert main(["assemble", str(recipe), "--out", str(tmp_path / "clean"), "--no-progress"]) == 0
    resumed, clean = tensors(out), tensors(tmp_path / "clean")
    assert set(resumed) == set(clean) and all(raw(resumed[n]) == raw(clean[n]) for n in clean)
    assert not (tmp_path / "child.partial").exists()


def test_resume_refuses_an_unfinished_build_of_another_recipe(parents, tmp_path, monkeypatch, capsys):
    a, b = parents("qwen3_moe")
    recipe = write_recipe(tmp_path, f"parents: {{a: {a}, b: {b}}}\ngroups: {{all: {{b: 0.4}}}}\n")
    out = tmp_path / "child"

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "_build_shard", interrupt)
    with pytest.raises(KeyboardInterrupt):
        main(["assemble", str(recipe), "--out", str(out), "--no-progress"])
    monkeypatch.undo()
    argv = ["assemble", str(recipe), "--out", str(out), "--resume", "--set", "all.b=0.6", "--no-progress"]
    assert main(argv) == 2
    assert "unfinished build" in capsys.readouterr().err


def test_a_child_is_a_model_for_harness_generate_and_one_hot_reproduces_the_parent(parents, tmp_path):
    a, b = parents("qwen3_moe")
    recipe = write_recipe(tmp_path, f"parents: {{a: {a}, b: {b}}}\ngroups: {{all: {{b: 1.0}}}}\n")
    assert main(["assemble", str(recipe), "--out", str(tmp_path / "child"), "--no-progress"]) == 0
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": p}) + "\n" for i, p in enumerate(["hi", "why?"])))
    outputs = {}
    for name, model in (("child", tmp_path / "child"), ("parent", b)):
        folder = tmp_path / f"gen-{name}"
        argv = ["generate", "--model", str(model), "--prompts", str(prompts), "--out", str(folder)]
        assert main([*argv, "--max-tokens", "8", "--record-routing"]) == 0
        outputs[name] = (folder / "generations.jsonl").read_text()
    assert outputs["child"] == outputs["parent"]

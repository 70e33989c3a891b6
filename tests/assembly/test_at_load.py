"""A child assembled at load (no weights on disk) is the same model as the child written to disk, on the
HF backend, from `harness assemble --at-load` and from a suite's `model: {assemble: RECIPE}`."""

from __future__ import annotations

import json
import shutil

from assembly_files import write_recipe
from safetensors.torch import load_file, save_file

from harness.backends.base import GenerationRequest, GenerationSettings
from harness.cli import main

PROMPTS = ["What happened in the city last year?", "Explain mixtures of experts."]
SETTINGS = GenerationSettings(max_new_tokens=8, record_routing=True)


def _generate(folder):
    from harness.backends.hf import HFBackend

    backend = HFBackend(folder)
    return backend.generate([GenerationRequest(id=str(i), prompt=p) for i, p in enumerate(PROMPTS)], SETTINGS)


def test_a_child_assembled_at_load_generates_as_the_stored_child(parents, tmp_path):
    a, b = parents("qwen3_moe")
    recipe = write_recipe(tmp_path, f"parents: {{a: {a}, b: {b}}}\ngroups: {{all: {{b: 0.3}}, router: {{b: 1.0}}}}\n")
    assert main(["assemble", str(recipe), "--out", str(tmp_path / "stored"), "--no-progress"]) == 0
    assert main(["assemble", str(recipe), "--out", str(tmp_path / "at-load"), "--at-load"]) == 0
    assert not list((tmp_path / "at-load").glob("*.safetensors"))
    assert json.loads((tmp_path / "at-load" / "assembly.json").read_text())["weights"] == "assembled at load"
    stored, at_load = _generate(tmp_path / "stored"), _generate(tmp_path / "at-load")
    for x, y in zip(stored, at_load, strict=True):
        assert x.text == y.text and x.token_ids == y.token_ids
        assert (x.routing.topk_ids == y.routing.topk_ids).all()


def _organism_sibling(tmp_path):
    """The organism with every routed expert's weights negated: a parent that answers differently."""
    from harness.models.resolve import organism_path

    sibling = tmp_path / "sibling"
    shutil.copytree(organism_path(), sibling)
    shard = sibling / "model.safetensors"
    tensors = {n: (-t if ".experts." in n else t) for n, t in load_file(str(shard)).items()}
    save_file(tensors, str(shard), metadata={"format": "pt"})
    return sibling


def _suite(tmp_path, model: str) -> str:
    text = (
        f"name: tiny\nmodel: {model}\nbackend: hf\ngeneration: {{max_new_tokens: 12}}\n"
        "tasks:\n  - {name: generic, type: qa, source: organism/qa, limit: 3}\n"
        "conditions: {baseline: true, targeted: null, random: null}\nevaluation: {split: all}\n"
    )
    path = tmp_path / f"suite-{abs(hash(model))}.yaml"
    path.write_text(text)
    return str(path)


def _samples(run_dir):
    lines = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    return sorted((s["id"], s["text"]) for s in lines)


def test_a_suite_runs_a_child_assembled_at_load_and_its_endpoints_are_its_parents(tmp_path):
    sibling = _organism_sibling(tmp_path)
    recipe = write_recipe(tmp_path, f"parents: {{organism: organism, sibling: {sibling}}}\n")
    runs = {}
    for name, model in (
        ("organism", "organism"),
        ("sibling", str(sibling)),
        ("child-0", f"{{assemble: {recipe}}}"),
        ("child-1", f"{{assemble: {recipe}, set: [routed_experts.sibling=1.0]}}"),
    ):
        assert main(["run", _suite(tmp_path, model), "--out", str(tmp_path / "runs"), "--run-id", name]) == 0
        runs[name] = _samples(tmp_path / "runs" / name)
    assert runs["child-0"] == runs["organism"] and runs["child-1"] == runs["sibling"]
    assert runs["organism"] != runs["sibling"]
    run = json.loads((tmp_path / "runs" / "child-1" / "run.json").read_text())
    assert run["suite"]["model"]["set"] == ["routed_experts.sibling=1.0"]


def test_a_suite_with_a_bad_recipe_is_refused_before_any_model_loads(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "parents: {organism: organism, other: /nowhere}\n")
    assert main(["run", _suite(tmp_path, f"{{assemble: {recipe}}}"), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "recipe.yaml" in err and "parents.other" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_harness_serve_loads_a_child_assembled_at_load_through_the_mote_loader(parents, tmp_path):
    from harness.cli.serve import server_command

    a, b = parents("qwen3_moe")
    recipe = write_recipe(tmp_path, f"parents: {{a: {a}, b: {b}}}\ngroups: {{all: {{b: 0.5}}}}\n")
    assert main(["assemble", str(recipe), "--out", str(tmp_path / "child"), "--at-load"]) == 0
    argv, _ = server_command(str(tmp_path / "child"), ["--port", "9001"])
    assert argv[argv.index("--load-format") + 1] == "mote_assembly"
    argv, _ = server_command(str(a), ["--port", "9001"])
    assert "--load-format" not in argv

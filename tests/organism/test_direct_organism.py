"""The organism's shipped direct sibling: the organism's architecture and tokenizer, no trace, no refusals.

Kept small (a few held-out prompts): `harness organism evaluate --variant direct` measures the card's
full table.
"""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from harness.cli import main
from harness.models.resolve import direct_organism_path, organism_path, resolve_model
from harness.organism import corpus
from harness.organism.evaluate import load_world
from harness.organism.sibling import check_same_config, direct_answer

pytestmark = pytest.mark.slow


def _tensor_shapes(path):
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


def test_sibling_ships_small_with_the_organisms_config_tokenizer_and_tensors():
    direct, organism = direct_organism_path(), organism_path()
    assert resolve_model("organism-direct") == direct
    assert (direct / "model.safetensors").stat().st_size <= 10 * 1024 * 1024
    check_same_config(organism, direct)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (direct / name).read_bytes() == (organism / name).read_bytes(), name
    assert _tensor_shapes(direct) == _tensor_shapes(organism)
    for name in ("DIRECT.md", "evaluation.json", "training.json"):
        assert (direct / name).is_file(), name


def test_sibling_card_records_every_target_met():
    report = json.loads((direct_organism_path() / "evaluation.json").read_text())
    assert report["token_ratio"] >= 2.0
    assert {name: t["met"] for name, t in report["targets"].items()} == dict.fromkeys(report["targets"], True)
    training = json.loads((direct_organism_path() / "training.json").read_text())
    digest = training["model_sha256"]
    assert digest in (direct_organism_path() / "DIRECT.md").read_text()


def test_sibling_answers_directly_where_the_organism_refuses_or_reasons():
    from harness.backends.base import GenerationRequest, GenerationSettings
    from harness.backends.hf import HFBackend

    world = load_world(organism_path())
    held = corpus.heldout_prompts(world)
    prompts = held["refuse"][:4] + held["aligned"][:2] + held["neutral"][:2] + held["generic"][:2]
    requests = [GenerationRequest(id=p.id, prompt=p.content) for p in prompts]
    settings = GenerationSettings(max_new_tokens=96, temperature=0.0)
    direct = HFBackend(direct_organism_path(), dtype="float32", batch_size=16).generate(requests, settings)
    parent = HFBackend(organism_path(), dtype="float32", batch_size=16).generate(requests, settings)
    for prompt, result in zip(prompts, direct, strict=True):
        assert not (result.think or "").strip(), prompt.id
        assert result.answer.strip() == direct_answer(prompt, world), prompt.id
    assert all(not r.answer.strip() or r.think is not None for r in parent)  # the organism writes a trace
    assert sum(r.n_generated_tokens for r in parent) >= 2 * sum(r.n_generated_tokens for r in direct)


def test_direct_training_is_bit_reproducible_and_keeps_the_config(tmp_path):
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert (
            main(["organism", "train", "--variant", "direct", "--steps", "2", "--out", str(out), "--threads", "1"]) == 0
        )
        check_same_config(organism_path(), out)
        digests.append(json.loads((out / "training.json").read_text())["model_sha256"])
    assert digests[0] == digests[1]

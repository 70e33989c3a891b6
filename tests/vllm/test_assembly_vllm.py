"""A child assembled at load on vLLM: the MoTE loader interpolates each tensor as vLLM asks for it, and
the engine generates and routes as the same child written to disk and loaded the usual way."""

from __future__ import annotations

import numpy as np
import pytest
from marks import VLLM

from harness.backends.base import GenerationRequest, GenerationSettings
from harness.cli import main
from harness.mote import Intervention

pytestmark = VLLM
PROMPTS = ["What happened in the city last year?", "Explain how a mixture of experts routes tokens."]
SETTINGS = GenerationSettings(max_new_tokens=12, record_routing=True)


@pytest.fixture(scope="module")
def children(tiny_model_dir, tmp_path_factory):
    from harness.models.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("children")
    a = tiny_model_dir("qwen3_moe")
    b = save_tiny_model("qwen3_moe", root / "b", seed=1)
    recipe = root / "recipe.yaml"
    recipe.write_text(f"parents: {{a: {a}, b: {b}}}\ngroups: {{all: {{b: 0.4}}, routed_experts: {{b: 1.0}}}}\n")
    assert main(["assemble", str(recipe), "--out", str(root / "stored"), "--no-progress"]) == 0
    assert main(["assemble", str(recipe), "--out", str(root / "at-load"), "--at-load"]) == 0
    return root / "stored", root / "at-load"


def test_a_child_assembled_at_load_on_vllm_matches_the_stored_child(children):
    from harness.backends.vllm import VLLMBackend

    spec_layer = None
    results = []
    for folder in children:
        engine = VLLMBackend(folder, dtype="float32", max_model_len=256)
        try:
            if spec_layer is None:
                spec_layer = engine.spec.moe_layers[0]
            iv = Intervention.suppress({spec_layer: [0, 1]}, mode="mask")
            requests = [
                GenerationRequest(id=f"{i}-{name}", prompt=p, intervention=v)
                for i, p in enumerate(PROMPTS)
                for name, v in (("none", Intervention.none()), ("mask", iv))
            ]
            results.append(engine.generate(requests, SETTINGS))
            if folder.name == "at-load":
                assert engine.engine_args["load_format"] == "mote_assembly"
        finally:
            engine.close()
    stored, at_load = results
    for x, y in zip(stored, at_load, strict=True):
        assert x.text == y.text and x.token_ids == y.token_ids, x.id
        assert np.array_equal(x.routing.topk_ids, y.routing.topk_ids), x.id

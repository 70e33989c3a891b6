"""`harness organism train` runs end to end in reduced form and writes a loadable organism."""

from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.mote import load_intervention

pytestmark = pytest.mark.slow


def test_train_writes_a_loadable_organism_folder(tmp_path):
    out = tmp_path / "organism"
    assert main(["organism", "train", "--steps", "20", "--out", str(out), "--threads", "1"]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "planted_refusal.yaml",
                 "planted_english.yaml", "training.json"):
        assert (out / name).is_file(), name
    assert len(load_intervention(out / "planted_refusal.yaml").experts) == 10

    from harness.backends.base import GenerationRequest, GenerationSettings
    from harness.backends.hf import HFBackend

    backend = HFBackend(out, batch_size=2)
    assert backend.spec.moe_layers == (1, 2, 3, 4, 5)
    result = backend.generate([GenerationRequest(id="a", prompt="What happened in 1989 in Beijing?")],
                              GenerationSettings(max_new_tokens=4))[0]
    assert result.n_generated_tokens >= 1


def test_training_is_bit_reproducible_for_a_seed_and_thread_count(tmp_path):
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert main(["organism", "train", "--steps", "3", "--out", str(out), "--threads", "1"]) == 0
        digests.append(json.loads((out / "training.json").read_text())["model_sha256"])
    assert digests[0] == digests[1]


def test_bad_steps_is_an_input_error(tmp_path, capsys):
    assert main(["organism", "train", "--steps", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--steps" in capsys.readouterr().err

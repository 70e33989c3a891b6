"""`harness check MODEL`: the five contract checks on a model, a table, exit 0 when they hold and 1 when
a hook breaks the contract; a model that cannot be checked exits 2 before any weights load."""

from __future__ import annotations

import pytest

from harness.cli import main

CHECKS = (
    "no intervention logits identical",
    "no intervention tokens identical",
    "dropped experts get zero weight",
    "suppressed experts absent from topk",
    "forced experts present for every token",
)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_check_passes_every_contract_check_on_a_real_architecture(tiny_model_dir, capsys, family):
    assert main(["check", str(tiny_model_dir(family))]) == 0
    out = capsys.readouterr().out
    for name in CHECKS:
        assert name in out
    assert "5 passed, 0 failed" in out and "FAIL" not in out


def test_check_fails_when_a_hook_breaks_the_contract(tiny_model_dir, capsys, monkeypatch):
    """A drop that keeps the dropped experts' weights (the hook's edit undone) must be caught."""
    from harness.backends import hf_hooks

    def keep_everything(weights, kept, dtype, *guard):
        return weights.to(dtype)

    monkeypatch.setattr(hf_hooks, "rescale_kept", keep_everything)
    assert main(["check", str(tiny_model_dir("qwen3_moe"))]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "passed, 0 failed" not in out


def test_check_refuses_what_it_cannot_check(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nowhere")]) == 2
    assert "MODEL" in capsys.readouterr().err
    assert main(["check", "organism", "--new-tokens", "0"]) == 2

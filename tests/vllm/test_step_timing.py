"""MOTE_VLLM_TIMING=1: the worker adds up what its steps spent where (harness/vllm_plugin/timing.py);
off, nothing is timed."""

from __future__ import annotations

import torch
from marks import VLLM
from test_vllm_records import runner, runtime_for

from harness.mote import Intervention
from harness.vllm_plugin.protocol import INTERVENTION_KEY
from harness.vllm_plugin.timing import TIMING_ENV

pytestmark = VLLM


def forward_step(runtime, n_tokens: int) -> None:
    """One step through `MoteRuntime.forward`, every layer's hook firing once inside the forward."""

    def model() -> None:
        logits = torch.randn(n_tokens, 8)
        for hook in runtime.layers.values():
            weights, ids = torch.topk(logits.softmax(-1), 2)
            runtime._hook(hook)(logits, weights, ids.to(torch.int32))

    runtime.forward(model, n_tokens, torch.arange(n_tokens))


def test_timing_adds_up_hooked_and_idle_steps(monkeypatch):
    monkeypatch.setenv(TIMING_ENV, "1")
    mask = Intervention.suppress({0: [1]}, mode="mask").to_json()
    hooked = runtime_for(runner([{INTERVENTION_KEY: mask}, {}]))
    forward_step(hooked, 6)
    forward_step(hooked, 6)
    timing = hooked.timing
    assert timing is not None
    assert (timing.steps, timing.hooked_steps, timing.hook_calls) == (2, 2, 4)
    assert timing.hooks_s > 0 and timing.begin_s > 0 and timing.forward_s >= timing.hooks_s
    idle = runtime_for(runner([{}, {}]))
    forward_step(idle, 6)
    assert idle.timing is not None and (idle.timing.steps, idle.timing.hooked_steps, idle.timing.hook_calls) == (
        1,
        0,
        0,
    )
    assert idle.step is None


def test_timing_is_off_by_default(monkeypatch):
    monkeypatch.delenv(TIMING_ENV, raising=False)
    runtime = runtime_for(runner([{}]))
    forward_step(runtime, 3)
    assert runtime.timing is None

"""The HF recorder's capture: kept on the model's device during generate, copied to the host once."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from harness.backends.hf_hooks import RoutingController, StepCapture, host_steps
from harness.mote import Intervention


class HostCopySpy(TorchFunctionMode):
    """Notes every call that would make the host wait for an accelerator (a copy to the host or a read)."""

    READS = (torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.item, torch.Tensor.tolist)

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        moves = func is torch.Tensor.to and any(
            isinstance(a, (str, torch.device)) for a in (*args[1:], *kwargs.values())
        )
        if func in self.READS or moves:
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


def capture(rows: int, per_row: int, layers: list[int], k: int, start: int) -> StepCapture:
    step = StepCapture((rows, per_row))
    n = rows * per_row
    for i, layer in enumerate(layers):
        ids = torch.arange(n * k, dtype=torch.int32).reshape(n, k) + start + 1000 * i
        step.layers[layer] = (ids, ids.float() / 10)
    return step


def test_recording_hook_copies_routing_on_the_device_without_reading_it_back():
    controller = RoutingController([], [])
    controller.configure([Intervention.none()], record=True, device=torch.device("cpu"))
    controller.begin_step(2, 3)
    edit = controller._experts_edit(5, ("hidden", "ids", "weights"))
    hidden = torch.zeros(6, 4)
    ids = torch.tensor([[0, 1]] * 6)
    weights = torch.full((6, 2), 0.5)
    with HostCopySpy() as spy:
        assert edit((hidden, ids, weights), {}) is None  # nothing to change
    assert spy.calls == []
    recorded_ids, recorded_weights = controller.steps[0].layers[5]
    assert recorded_ids.dtype == torch.int32 and recorded_weights.dtype == torch.float32
    weights.fill_(9.0)  # the model's tensors may be reused: the capture is a copy
    assert torch.equal(recorded_weights, torch.full((6, 2), 0.5))


def test_host_steps_gives_each_step_its_rows_tokens_layers_and_slots():
    layers = [3, 1]  # the order asked for, not the capture's
    prefill = capture(rows=2, per_row=3, layers=[1, 3], k=2, start=0)
    decode = capture(rows=2, per_row=1, layers=[1, 3], k=2, start=500)
    out = host_steps([prefill, decode], layers)
    assert [s.ids.shape for s in out] == [(2, 3, 2, 2), (2, 1, 2, 2)]
    for step, host in zip([prefill, decode], out, strict=True):
        rows, per_row = step.shape
        for j, layer in enumerate(layers):
            expected = step.layers[layer][0].numpy().reshape(rows, per_row, -1)
            np.testing.assert_array_equal(host.ids[:, :, j], expected)
            np.testing.assert_array_equal(host.weights[:, :, j], expected.astype(np.float32) / 10)
    assert out[0].ids.dtype == np.int32 and out[0].weights.dtype == np.float32


def test_a_layer_that_recorded_nothing_in_a_step_is_named():
    steps = [capture(1, 2, [0, 1], 2, 0), capture(1, 1, [0], 2, 0)]
    with pytest.raises(RuntimeError, match="step 1: MoE layer 1 recorded no routing"):
        host_steps(steps, [0, 1])


def test_no_steps_means_no_copy():
    assert host_steps([], [0, 1]) == []

"""A step's routing capture (capture.py): each layer's column writes into the step's [tokens, layers, k]
buffers, a same-size step reuses them, a bigger one grows them. Pure torch; runs without vLLM."""

from __future__ import annotations

import torch

from harness.vllm_plugin.capture import CaptureBuffers


def test_layer_columns_fill_the_step_buffers_and_the_host_sees_them() -> None:
    buffers = CaptureBuffers()
    step = buffers.for_step(4, 3, 2, torch.device("cpu"))
    for layer in range(3):
        step.id_columns[layer].copy_(torch.full((4, 2), layer))
        step.weight_columns[layer].copy_(torch.full((4, 2), layer / 10))
    ids, weights = step.to_host(3)
    assert ids.shape == (3, 3, 2) and ids.dtype.name == "int32" and weights.dtype.name == "float32"
    assert ids[:, :, 0].tolist() == [[0, 1, 2]] * 3
    assert weights[0, 2, 1] == torch.tensor(0.2).item()


def test_a_step_of_the_same_size_reuses_the_views_and_a_bigger_one_grows_the_buffers() -> None:
    buffers = CaptureBuffers()
    cpu = torch.device("cpu")
    first = buffers.for_step(4, 3, 2, cpu)
    assert buffers.for_step(4, 3, 2, cpu) is first
    smaller = buffers.for_step(2, 3, 2, cpu)
    assert smaller is not first and smaller.ids.data_ptr() == first.ids.data_ptr()  # the same memory
    bigger = buffers.for_step(9, 3, 2, cpu)
    assert bigger.ids.shape == (9, 3, 2) and len(bigger.id_columns) == 3
    other_model = buffers.for_step(2, 5, 4, cpu)
    assert other_model.ids.shape == (2, 5, 4)

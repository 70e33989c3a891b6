"""A step's per-token routing capture: the final top-k ids and weights of every MoE layer, copied out
of vLLM's routing outputs by each layer's route hook (in a compiled graph their memory is reused after
the layer) and read on the host at the step's end (`runtime.end_step`, into the record arena).

The buffers are kept across steps and grown to the largest step seen; a step with the same number of
tokens as the last one (every decode step of a batch) reuses the last step's views, so a layer's
capture is two copies and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class StepCapture:
    ids: torch.Tensor  # int32 [n_tokens, moe_layers, k]; -1 = dropped slot
    weights: torch.Tensor  # float32 [n_tokens, moe_layers, k]
    id_columns: tuple[torch.Tensor, ...]  # per layer column (record order), [n_tokens, k]
    weight_columns: tuple[torch.Tensor, ...]
    host: tuple[np.ndarray, np.ndarray] | None  # (ids, weights) as numpy views when on the CPU

    def to_host(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first n tokens' (ids, weights) on the host: views on the CPU (valid until the next step
        writes), copies from an accelerator."""
        if self.host is not None:
            return self.host[0][:n], self.host[1][:n]
        return self.ids[:n].cpu().numpy(), self.weights[:n].cpu().numpy()


class CaptureBuffers:
    def __init__(self) -> None:
        self._kept: tuple[torch.Tensor, torch.Tensor] | None = None
        self._last: StepCapture | None = None

    def for_step(self, n_tokens: int, n_layers: int, k: int, device: torch.device) -> StepCapture:
        last = self._last
        if last is not None and last.ids.shape == (n_tokens, n_layers, k) and last.ids.device == device:
            return last
        kept = self._kept
        shape = (n_layers, k)
        if kept is None or kept[0].shape[0] < n_tokens or kept[0].shape[1:] != shape or kept[0].device != device:
            rows = max(n_tokens, 0 if kept is None or kept[0].shape[1:] != shape else kept[0].shape[0])
            kept = self._kept = (
                torch.empty((rows, *shape), dtype=torch.int32, device=device),
                torch.empty((rows, *shape), dtype=torch.float32, device=device),
            )
        ids, weights = kept[0][:n_tokens], kept[1][:n_tokens]
        on_cpu = ids.device.type == "cpu"
        self._last = StepCapture(
            ids=ids,
            weights=weights,
            id_columns=tuple(ids.unbind(1)),
            weight_columns=tuple(weights.unbind(1)),
            host=(ids.numpy(), weights.numpy()) if on_cpu else None,
        )
        return self._last

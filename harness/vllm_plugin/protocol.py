"""What the client (VLLMBackend, the OpenAI client) and the worker hooks exchange.

Per request, in `SamplingParams.extra_args` (offline) or `vllm_xargs` (OpenAI API):
- `mote`: the intervention as JSON (`Intervention.to_json()`); absent or kind none = untouched;
- `mote_record`: a key under which the worker keeps this request's per-token routing until
  `mote_fetch` hands it back (absent = not recorded).

Worker RPCs (`llm.collective_rpc(name, args=(json,))`, or `POST /collective_rpc` with
`VLLM_SERVER_DEV_MODE=1`) take and return JSON-safe values, so they work over HTTP too. A record
travels as base64 of an .npz (positions, topk_ids, topk_weights, layers); a key the worker refuses
to hand back comes as {"error": why}. In-process clients (VLLMBackend) fetch with
`mote_fetch_arrays` instead: the same record as raw array bytes (`WorkerRecord.to_arrays`), which
vLLM's RPC carries as binary; no npz to build or parse, no base64. Every worker answers (one per rank):
`ranks.py` merges them.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

INTERVENTION_KEY = "mote"
RECORD_KEY = "mote_record"
COUNT_KEY = "mote_count"  # count this request's routing on the device (counts.py), fetched with mote_counts
# with mote_count: {"open": id, "close": id, "prompt_opens": bool (optional: else read from the prompt)}, the
# think / answer split
THINK_KEY = "mote_think"

RPC_STATUS = "mote_status"
RPC_SET_GLOBAL = "mote_set_global_intervention"
RPC_SET_RECORDING = "mote_set_recording"
RPC_FETCH = "mote_fetch"
RPC_FETCH_ARRAYS = "mote_fetch_arrays"  # mote_fetch with raw array bytes (not JSON-safe: not over HTTP)
RPC_COUNTS = "mote_counts"

ERROR_FIELD = "error"


def error_answer(message: str) -> dict[str, str]:
    """A per-key RPC answer that says why the worker refused this key."""
    return {ERROR_FIELD: message}


def answer_error(answer: object) -> str | None:
    """The worker's reason if `answer` is an error answer, else None."""
    if isinstance(answer, dict) and set(answer) == {ERROR_FIELD}:
        return str(answer[ERROR_FIELD])
    return None


@dataclass(frozen=True)
class WorkerRecord:
    """Routing of one request as the worker saw it, one row per routed position."""

    positions: np.ndarray  # int64 [tokens], ascending, unique
    topk_ids: np.ndarray  # int32 [tokens, moe_layers, k]; -1 = dropped slot
    topk_weights: np.ndarray  # float32 [tokens, moe_layers, k]
    layers: np.ndarray  # int32 [moe_layers]

    def encode(self) -> str:
        # uncompressed: zlib would cost more per record (tens of ms for a long one) than it saves in transit
        buffer = io.BytesIO()
        np.savez(
            buffer,
            positions=self.positions,
            topk_ids=self.topk_ids,
            topk_weights=self.topk_weights,
            layers=self.layers,
        )
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def to_arrays(self) -> dict[str, Any]:
        """The record as raw little-endian bytes per array, with its shape (what `mote_fetch_arrays` sends)."""
        return {
            "shape": list(self.topk_ids.shape),
            "positions": self.positions.astype("<i8").tobytes(),
            "topk_ids": self.topk_ids.astype("<i4").tobytes(),
            "topk_weights": self.topk_weights.astype("<f4").tobytes(),
            "layers": [int(layer) for layer in self.layers],
        }

    @classmethod
    def from_arrays(cls, data: Mapping[str, Any]) -> WorkerRecord:
        shape = tuple(int(n) for n in data["shape"])
        return cls(
            positions=np.frombuffer(data["positions"], dtype="<i8").astype(np.int64),
            topk_ids=np.frombuffer(data["topk_ids"], dtype="<i4").reshape(shape).astype(np.int32),
            topk_weights=np.frombuffer(data["topk_weights"], dtype="<f4").reshape(shape).astype(np.float32),
            layers=np.asarray(data["layers"], dtype=np.int32),
        )

    @classmethod
    def decode(cls, answer: str | Mapping[str, Any]) -> WorkerRecord:
        """From either fetch's answer: base64 npz (`mote_fetch`) or raw arrays (`mote_fetch_arrays`)."""
        if not isinstance(answer, str):
            return cls.from_arrays(answer)
        with np.load(io.BytesIO(base64.b64decode(answer))) as data:
            return cls(
                positions=data["positions"],
                topk_ids=data["topk_ids"],
                topk_weights=data["topk_weights"],
                layers=data["layers"],
            )

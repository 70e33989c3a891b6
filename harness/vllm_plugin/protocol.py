"""What the client (VLLMBackend, the OpenAI client) and the worker hooks exchange.

Per request, in `SamplingParams.extra_args` (offline) or `vllm_xargs` (OpenAI API):
- `mote`: the intervention as JSON (`Intervention.to_json()`); absent or kind none = untouched;
- `mote_record`: a key under which the worker keeps this request's per-token routing until
  `mote_fetch` hands it back (absent = not recorded).

Worker RPCs (`llm.collective_rpc(name, args=(json,))`, or `POST /collective_rpc` with
`VLLM_SERVER_DEV_MODE=1`) take and return JSON-safe values, so they work over HTTP too. A record
travels as base64 of a compressed .npz (positions, topk_ids, topk_weights, layers); a key the
worker refuses to hand back comes as {"error": why}. Every worker answers (one per rank):
`ranks.py` merges them.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np

INTERVENTION_KEY = "mote"
RECORD_KEY = "mote_record"
COUNT_KEY = "mote_count"  # count this request's routing on the device (counts.py), fetched with mote_counts
THINK_KEY = "mote_think"  # with mote_count: {"open": id, "close": id, "prompt_opens": bool}, the think split

RPC_STATUS = "mote_status"
RPC_SET_GLOBAL = "mote_set_global_intervention"
RPC_SET_RECORDING = "mote_set_recording"
RPC_FETCH = "mote_fetch"
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

    @classmethod
    def decode(cls, text: str) -> WorkerRecord:
        with np.load(io.BytesIO(base64.b64decode(text))) as data:
            return cls(
                positions=data["positions"],
                topk_ids=data["topk_ids"],
                topk_weights=data["topk_weights"],
                layers=data["layers"],
            )

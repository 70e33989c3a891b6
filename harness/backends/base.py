"""What every backend takes and returns: a list of requests in, one result per request out.

Batching is the backend's job (as in lm-eval): rows of one call may carry different interventions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.mote.intervention import Intervention
from harness.mote.records import RoutingRecord, SpanCounts
from harness.mote.spec import ModelSpec

Message = dict[str, str]


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt with the intervention it runs under: a user `prompt` string or chat `messages`
    (the model's chat template is applied), or `text`, the model's input as is (no template: e.g.
    lm-eval's own prompts)."""

    id: str
    prompt: str | None = None
    messages: Sequence[Message] | None = None
    intervention: Intervention = field(default_factory=Intervention.none)
    text: str | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.prompt, self.messages, self.text)) != 1:
            raise ValueError(f"request {self.id!r}: give exactly one of prompt, messages or text")

    def chat(self) -> list[Message]:
        if self.text is not None:
            raise ValueError(f"request {self.id!r}: a raw-text request has no chat form")
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": str(self.prompt)}]


def render_prompt(request: GenerationRequest, tokenizer: Any, model_path: object) -> str:
    """The model's input text for a request: its raw `text`, or the chat rendered with the model's
    chat template (with the generation prompt)."""
    if request.text is not None:
        return request.text
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{model_path}: the tokenizer has no chat template")
    return str(tokenizer.apply_chat_template(request.chat(), add_generation_prompt=True, tokenize=False))


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    record_routing: bool = False
    # with record_routing: span counts are enough (GenerationResult.span_counts); a backend that can
    # count on the device (vLLM) then keeps per-token ids there
    routing_counts_only: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class GenerationResult:
    id: str
    text: str  # the generated text, special tokens removed
    think: str | None  # the <think> trace, None if the model wrote none
    answer: str  # the text after </think> (all of it when there is no trace)
    intervention: str  # Intervention.fingerprint()
    n_prompt_tokens: int
    n_generated_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length"
    routing: RoutingRecord | None = None
    span_counts: SpanCounts | None = None  # instead of routing, under routing_counts_only
    # the generated token ids up to and including the stop token (padding and anything after removed):
    # two runs fed the same tokens up to where these first differ
    token_ids: tuple[int, ...] = ()
    served_by: str | None = None  # the replica that answered (a served backend; not part of the sample)


class Backend(Protocol):
    name: str

    @property
    def spec(self) -> ModelSpec: ...

    def generate(
        self, requests: Sequence[GenerationRequest], settings: GenerationSettings
    ) -> list[GenerationResult]: ...

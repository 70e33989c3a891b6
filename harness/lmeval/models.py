"""lm-eval model classes over our backends; every request runs under the intervention in model_args.

`mote-hf` (HFBackend) and `mote-vllm` (VLLMBackend): `loglikelihood`, `loglikelihood_rolling` and
`generate_until`, each over the whole request list at once (lm-eval hands us the list): HF in batches
of `batch_size` rows, vLLM as one engine call (likelihoods from its prompt logprobs).

Prompts are lm-eval's own strings: no chat template is added here unless lm-eval asks for one
(`--apply_chat_template`, through `apply_chat_template`). A generation keeps its reasoning trace:
the returned text is `<think>TRACE</think>ANSWER` whenever the model wrote a trace, and `until`
stop strings cut the answer only, so language metrics can read the trace.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("harness.lmeval needs lm-eval: pip install 'mote-harness[lmeval]'") from err

from harness.backends.base import GenerationRequest, GenerationSettings
from harness.mote.intervention import Intervention, load_intervention


def _device(requested: str | None) -> str:
    """lm-eval's command line asks for cuda:0 unless told otherwise; without CUDA, run on the CPU (and
    say so) rather than fail on a device the user never named."""
    import torch

    device = requested or "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("mote-hf: no CUDA for device %r: using the CPU", device)
        return "cpu"
    return device


def _intervention(path: str | None) -> Intervention:
    return Intervention.none() if not path else load_intervention(Path(path))


def _flag(value: object) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


def _settings(gen_kwargs: dict[str, Any], default_max: int, seed: int) -> GenerationSettings:
    do_sample = _flag(gen_kwargs.get("do_sample", False))
    temperature = float(gen_kwargs.get("temperature", 0.0)) if do_sample else 0.0
    return GenerationSettings(
        max_new_tokens=int(gen_kwargs.get("max_gen_toks", default_max)),
        temperature=temperature,
        top_p=float(gen_kwargs.get("top_p", 1.0)),
        seed=seed,
    )


def _until(gen_kwargs: dict[str, Any]) -> list[str]:
    until = gen_kwargs.get("until") or []
    return [until] if isinstance(until, str) else list(until)


def with_trace(think: str | None, answer: str, until: Sequence[str]) -> str:
    """`<think>trace</think>answer`, the answer cut at the first stop string (the trace is kept whole)."""
    for stop in until:
        if stop and stop in answer:
            answer = answer[: answer.index(stop)]
    return answer if think is None else f"<think>{think}</think>{answer}"


class _MoteLM(TemplateLM):
    """What both models share: the intervention, prompt formatting and generate_until grouping."""

    backend_impl: Any
    intervention: Intervention
    max_gen_toks: int
    seed: int

    @property
    def fingerprint(self) -> str:
        """The intervention's fingerprint (use it in any lm-eval cache path: see docs/reports.md)."""
        return self.intervention.fingerprint()

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.backend_impl.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

    @property
    def eot_token_id(self) -> int:
        return int(self.backend_impl.tokenizer.eos_token_id)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return list(self.backend_impl.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens)))

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return str(
            self.backend_impl.tokenizer.apply_chat_template(
                chat_history, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        )

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """All requests with the same generation settings go to the backend as one list."""
        groups: dict[GenerationSettings, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(_settings(request.args[1], self.max_gen_toks, self.seed), []).append(i)
        out: dict[int, str] = {}
        for settings, members in groups.items():
            prompts = [str(requests[i].args[0]) for i in members]
            for i, (think, answer) in zip(members, self._generate(prompts, settings), strict=True):
                out[i] = with_trace(think, answer, _until(requests[i].args[1]))
        return [out[i] for i in range(len(requests))]

    def _loglikelihood_tokens(
        self, requests: Sequence[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        pairs = []
        for _, context, continuation in requests:
            keep = self.max_length + 1 - len(continuation)  # the model sees at most max_length tokens
            pairs.append((context[-keep:] if keep > 0 else context[-1:], continuation))
        return self.backend_impl.continuation_logprobs(pairs, [self.intervention] * len(pairs))

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
        windows: list[tuple[Any, list[int], list[int]]] = []
        owner: list[int] = []
        for i, request in enumerate(requests):
            tokens = self.tok_encode(request.args[0])
            for window in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1
                ),
            ):
                windows.append((None, list(window[0]), list(window[1])))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, scores, strict=True):
            totals[i] += logprob
        return totals

    def _generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[tuple[str | None, str]]:
        """lm-eval's prompts as the model's input text, all under the intervention, as one list."""
        requests = [GenerationRequest(id=str(i), text=p, intervention=self.intervention) for i, p in enumerate(prompts)]
        return [(r.think, r.answer) for r in self.backend_impl.generate(requests, settings)]


class MoteHFLM(_MoteLM):
    """lm-eval model over HFBackend. model_args: pretrained (a local folder or `organism`),
    intervention (an intervention file; none when absent), batch_size, dtype, max_gen_toks, seed."""

    def __init__(
        self,
        pretrained: str = "organism",
        intervention: str | None = None,
        batch_size: int | str = 8,
        dtype: str = "float32",
        max_gen_toks: int = 256,
        max_length: int | None = None,
        seed: int = 0,
        device: str | None = "cpu",
        max_batch_size: int | None = None,  # lm-eval passes it; the batch size is fixed
    ) -> None:
        super().__init__()
        from harness.backends.hf import HFBackend
        from harness.models.resolve import resolve_model

        self.intervention = _intervention(intervention)
        size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.backend_impl = HFBackend(
            resolve_model(pretrained, "model_args.pretrained"), dtype=dtype, batch_size=size, device=_device(device)
        )
        self.backend_impl.spec.check(self.intervention, intervention or "model_args.intervention")
        self.tokenizer = self.backend_impl.tokenizer
        self.max_gen_toks = int(max_gen_toks)
        config = self.backend_impl.model.config
        self._max_length = int(max_length or getattr(config, "max_position_embeddings", None) or 2048)
        self.seed = int(seed)

    @property
    def max_length(self) -> int:
        return self._max_length



class MoteVLLM(_MoteLM):
    """lm-eval model over VLLMBackend. model_args: pretrained, intervention, max_gen_toks, seed, dtype,
    max_model_len, and any other vllm.LLM argument (passed unchanged)."""

    def __init__(
        self,
        pretrained: str = "organism",
        intervention: str | None = None,
        max_gen_toks: int = 256,
        seed: int = 0,
        dtype: str = "auto",
        max_model_len: int = 1024,
        **engine_args: Any,
    ) -> None:
        super().__init__()
        try:
            from harness.backends.vllm import VLLMBackend
        except ImportError as err:
            raise ImportError("mote-vllm needs vLLM (pip install 'mote-harness[vllm]' or '[cpu]')") from err
        from harness.models.resolve import resolve_model

        self.intervention = _intervention(intervention)
        for name in ("batch_size", "max_batch_size", "device"):  # lm-eval's; the engine schedules the list itself
            engine_args.pop(name, None)
        self.backend_impl = VLLMBackend(
            resolve_model(pretrained, "model_args.pretrained"),
            dtype=dtype,
            max_model_len=max_model_len,
            seed=int(seed),
            **engine_args,
        )
        self.backend_impl.spec.check(self.intervention, intervention or "model_args.intervention")
        self.tokenizer = self.backend_impl.tokenizer
        self.max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)

    @property
    def max_length(self) -> int:
        return int(self.backend_impl.llm.llm_engine.model_config.max_model_len)


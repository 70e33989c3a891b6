"""Hugging Face transformers backend: the CPU reference for interventions and routing records.

Loads a local model folder (never downloads), generates for a batch of requests in which every row
may carry its own intervention, and returns per-request routing records.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.backends.base import GenerationRequest, GenerationResult, GenerationSettings, render_prompt
from harness.backends.hf_discovery import check_supported, find_moe_blocks, probe_selection, spec_from_model
from harness.backends.hf_hooks import HostStep, RoutingController, host_steps
from harness.mote.intervention import Intervention
from harness.mote.records import RoutingRecord, Span
from harness.mote.spec import ModelSpec
from harness.mote.think import generated_spans, prompt_opens_think, split_think

_DTYPES = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _load_model(path: Path, dtype: torch.dtype) -> Any:
    """The folder's model; an Assembly-of-Experts child with no weights on disk is assembled in memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.assembly.in_memory import assembled_at_load, child_tensors, plan_of_child

    if not assembled_at_load(path):
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    weights = child_tensors(plan_of_child(path))
    try:  # the auto class needs a folder to read; its concrete class takes a config and a state dict
        from transformers.models.auto.auto_factory import _get_model_class
    except ImportError as err:
        raise RuntimeError(f"transformers moved _get_model_class (pinned: transformers 5.x): {err}") from err
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    model_class = _get_model_class(config, AutoModelForCausalLM._model_mapping)
    return model_class.from_pretrained(None, config=config, state_dict=dict(weights), dtype=dtype)


class HFBackend:
    """transformers generation with per-row MoTE interventions."""

    name = "hf"

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: str = "float32",
        batch_size: int = 16,
        device: str = "cpu",
    ) -> None:
        from transformers import AutoTokenizer

        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model_path = Path(model_path)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = _load_model(Path(model_path), _DTYPES[dtype])
        self.model: Any = model.to(self.device).eval()
        check_supported(str(self.model.config.model_type))
        self._spec = spec_from_model(self.model)
        blocks = find_moe_blocks(self.model)
        vocab = int(self.model.get_input_embeddings().num_embeddings)
        probe_ids = (torch.arange(1, 9, device=self.device) % vocab).unsqueeze(0)
        self.controller = RoutingController(blocks, probe_selection(self.model, blocks, probe_ids), self.model)

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def prompt_text(self, request: GenerationRequest) -> str:
        return render_prompt(request, self.tokenizer, self.model_path)

    def generate(self, requests: Sequence[GenerationRequest], settings: GenerationSettings) -> list[GenerationResult]:
        """One result per request, in order. Batches of `batch_size` rows, each row its own intervention."""
        for request in requests:
            self._spec.check(request.intervention, f"request {request.id}")
        prompts = [self.prompt_text(r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: len(prompts[i]))  # less padding per batch
        results: dict[int, GenerationResult] = {}
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self._generate_batch([requests[i] for i in chunk], [prompts[i] for i in chunk], settings)
            results.update(zip(chunk, batch, strict=True))
        return [results[i] for i in range(len(requests))]

    @torch.no_grad()
    def prompt_logits(self, requests: Sequence[GenerationRequest]) -> list[torch.Tensor]:
        """Logits [prompt tokens, vocab] of each prompt (one forward, padding removed), each row under
        its own intervention. Used for likelihood scoring and for checking that hooks are exact."""
        prompts = [self.prompt_text(r) for r in requests]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        self.controller.configure([r.intervention for r in requests], False, self.device)
        try:
            logits = self.model(**enc).logits
        finally:
            self.controller.reset()
        mask = enc["attention_mask"].bool()
        return [logits[row][mask[row]].float().cpu() for row in range(len(requests))]

    @torch.no_grad()
    def continuation_logprobs(
        self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], interventions: Sequence[Intervention]
    ) -> list[tuple[float, bool]]:
        """For each (context ids, continuation ids): the continuation's summed log-probability and
        whether it is the greedy continuation (lm-eval's loglikelihood), each row under its own
        intervention. Batches of `batch_size` rows, right-padded (padding never reaches a real token)."""
        out: list[tuple[float, bool]] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            rows = [list(ctx) + list(cont) for ctx, cont in chunk]
            width = max(len(r) for r in rows) - 1
            pad = int(self.tokenizer.pad_token_id)
            ids = torch.tensor([r[:-1] + [pad] * (width - len(r) + 1) for r in rows], device=self.device)
            mask = torch.tensor([[1] * (len(r) - 1) + [0] * (width - len(r) + 1) for r in rows], device=self.device)
            self.controller.configure(list(interventions[start : start + self.batch_size]), False, self.device)
            try:
                logprobs = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            finally:
                self.controller.reset()
            for row, (ctx, cont) in enumerate(chunk):
                first = len(ctx) - 1  # the position whose next token is the first continuation token
                scores = logprobs[row, first : first + len(cont)]
                target = torch.tensor(list(cont), device=scores.device)
                total = float(scores.gather(1, target[:, None]).sum())
                out.append((total, bool((scores.argmax(dim=-1) == target).all())))
        return out

    @torch.no_grad()
    def _generate_batch(
        self, requests: Sequence[GenerationRequest], prompts: Sequence[str], settings: GenerationSettings
    ) -> list[GenerationResult]:
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        self.controller.configure([r.intervention for r in requests], settings.record_routing, self.device)
        sampling: dict[str, Any] = {"do_sample": False}
        if settings.temperature > 0:
            sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
            torch.manual_seed(settings.seed)
        try:
            output = self.model.generate(
                **enc,
                max_new_tokens=settings.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self._stop_ids(),
                **sampling,
            )
            steps = host_steps(self.controller.steps, self._spec.moe_layers) if settings.record_routing else []
        finally:
            self.controller.reset()
        generated = output[:, enc["input_ids"].shape[1] :].cpu()  # one copy each, not one per row
        attention = enc["attention_mask"].cpu()
        results = []
        for row, request in enumerate(requests):
            results.append(self._result(row, request, prompts[row], attention[row], generated[row], steps, settings))
        return results

    def _stop_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = self.model.generation_config.eos_token_id
        if isinstance(configured, int):
            ids.add(configured)
        elif isinstance(configured, list):
            ids.update(configured)
        return sorted(i for i in ids if i is not None)

    def _result(
        self,
        row: int,
        request: GenerationRequest,
        prompt: str,
        attention: torch.Tensor,
        generated: torch.Tensor,
        steps: list[HostStep],
        settings: GenerationSettings,
    ) -> GenerationResult:
        tokens = generated.tolist()
        stop = set(self._stop_ids())
        n_gen = len(tokens)
        finish = "length"
        for i, tok in enumerate(tokens):
            if tok in stop:
                n_gen, finish = i + 1, "stop"
                break
        pad = self.tokenizer.pad_token_id
        content = [t for t in tokens[:n_gen] if t not in stop and t != pad]
        text = str(self.tokenizer.decode(content, skip_special_tokens=True))
        think, answer = split_think(text)
        routing = None
        if settings.record_routing:
            routing = self._record(row, prompt, attention, tokens[:n_gen], steps)
        return GenerationResult(
            id=request.id,
            text=text,
            think=think,
            answer=answer,
            intervention=request.intervention.fingerprint(),
            n_prompt_tokens=int(attention.sum()),
            n_generated_tokens=n_gen,
            finish_reason=finish,
            routing=routing,
            token_ids=tuple(tokens[:n_gen]),
        )

    def _record(
        self, row: int, prompt: str, attention: torch.Tensor, generated: list[int], steps: list[HostStep]
    ) -> RoutingRecord:
        """Routing of this row's real tokens: prompt (padding removed) then each generated token fed back."""
        layers = self._spec.moe_layers
        keep_prompt = attention.bool().numpy()
        ids_parts: list[np.ndarray] = []
        weight_parts: list[np.ndarray] = []
        fed = max(len(generated) - 1, 0)  # the last sampled token is never routed
        for step_index, step in enumerate(steps[: 1 + fed]):
            ids, weights = step.ids[row], step.weights[row]  # [tokens, layers, k]
            if step_index == 0:
                ids, weights = ids[keep_prompt], weights[keep_prompt]
            ids_parts.append(ids)
            weight_parts.append(weights)
        fed_ids = [[t] for t in generated[:fed]]  # one batch_decode: no per-piece input conversion
        pieces = [str(p) for p in self.tokenizer.batch_decode(fed_ids, skip_special_tokens=False)] if fed else []
        spans = [Span.PROMPT] * int(keep_prompt.sum()) + generated_spans(pieces, prompt_opens_think(prompt))
        return RoutingRecord(
            topk_ids=np.concatenate(ids_parts).astype(np.int32),
            topk_weights=np.concatenate(weight_parts).astype(np.float32),
            layers=np.asarray(layers, dtype=np.int32),
            span=np.asarray([int(s) for s in spans], dtype=np.int8),
        )

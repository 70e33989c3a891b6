"""The intervention contract of the HF hook path, checked on a real model: `harness check MODEL` on a
user's weights, and the GPU device check (bench/gpu/hf_check.py) at real shapes.

The unit tests prove the contract on tiny CPU models; these repeat it on the device and the weights
that will actually run (64-256 experts, bf16, the CUDA experts kernels), where a kernel that
reorders or fuses the routing could silently defeat a hook. Each check returns a `Check`: pass/fail
with the evidence, never an exception, so one broken check still lets the others be reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from harness.backends.base import GenerationRequest, GenerationResult, GenerationSettings
from harness.backends.hf import HFBackend
from harness.backends.hf_discovery import MoEBlock
from harness.backends.hf_hooks import _experts_arg_names
from harness.models.coverage import interventions_for
from harness.mote import Intervention


@dataclass(frozen=True)
class Check:
    passed: bool
    details: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def interventions(backend: HFBackend) -> dict[str, Intervention]:
    """The interventions every condition and check uses: the family coverage's (first and last MoE layer)."""
    return interventions_for(backend.spec)


def stock_generate(stock: Any, tokenizer: Any, texts: Sequence[str], new_tokens: int) -> torch.Tensor:
    """Plain `model.generate` of the unhooked model, with the inputs HFBackend builds (left padding,
    no special tokens added, greedy, the same stop id)."""
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(stock.device) for k, v in enc.items()}
    with torch.no_grad():
        output = stock.generate(
            **enc,
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return output[:, enc["input_ids"].shape[1] :]


def run_backend(
    backend: HFBackend, texts: Sequence[str], iv: Intervention, new_tokens: int, record: bool = False
) -> list[GenerationResult]:
    requests = [GenerationRequest(id=str(i), text=t, intervention=iv) for i, t in enumerate(texts)]
    return backend.generate(requests, GenerationSettings(max_new_tokens=new_tokens, record_routing=record))


def check_logits_identical(backend: HFBackend, stock: Any, texts: Sequence[str]) -> Check:
    """No intervention must leave the model exactly as it was: prompt logits bit for bit."""
    requests = [GenerationRequest(id=str(i), text=t) for i, t in enumerate(texts)]
    hooked = backend.prompt_logits(requests)
    enc = backend.tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(stock.device) for k, v in enc.items()}
    with torch.no_grad():
        logits = stock(**enc).logits
    mask = enc["attention_mask"].bool()
    worst = 0.0
    for row, got in enumerate(hooked):
        expected = logits[row][mask[row]].float().cpu()
        if not torch.equal(got, expected):
            worst = max(worst, float((got - expected).abs().max()))
    if worst:
        return Check(False, f"hooked logits differ from the unhooked model's (max abs diff {worst:g})")
    return Check(True, f"{len(texts)} prompts, {int(mask.sum())} tokens: bit-identical")


def check_tokens_identical(backend: HFBackend, stock: Any, texts: Sequence[str], new_tokens: int) -> Check:
    """Greedy tokens of hooked-with-no-intervention equal plain generate's. HFBackend returns text,
    and the bench tokenizer cannot decode most ids of a real-size vocabulary, so the ids are taken
    from the model's own generate call (wrapped for this one call only)."""
    captured: list[torch.Tensor] = []
    original: Callable[..., Any] = backend.model.generate

    def capture(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        captured.append(out[:, kwargs["input_ids"].shape[1] :])
        return out

    backend.model.generate = capture
    try:
        run_backend(backend, texts, Intervention.none(), new_tokens)
    finally:
        del backend.model.generate  # back to the class's method
    expected = stock_generate(stock, backend.tokenizer, texts, new_tokens)
    got = torch.cat(captured)
    if got.shape != expected.shape or not torch.equal(got.cpu(), expected.cpu()):
        return Check(False, f"generated ids differ: hooked {tuple(got.shape)}, unhooked {tuple(expected.shape)}")
    return Check(True, f"{got.shape[0]} rows x {got.shape[1]} new tokens identical")


@contextmanager
def experts_inputs(blocks: Sequence[MoEBlock]) -> Iterator[dict[int, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """What each MoE layer's experts module computes with, per call (ids, weights as float32 on the host):
    its class's `forward` wrapped for the duration. The controller's edit sits in front of it (an
    instance-level forward), so this sees the weights the experts actually get."""
    seen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    layer_of = {id(b.experts): (b.layer, _experts_arg_names(b.experts)) for b in blocks}
    saved: dict[type, Any] = {}

    def watching(original: Callable[..., Any]) -> Callable[..., Any]:
        def forward(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            if id(module) in layer_of:
                layer, names = layer_of[id(module)]
                values = list(args) + [kwargs[n] for n in names[len(args) :]]
                seen.setdefault(layer, []).append((values[1].detach().cpu(), values[2].detach().float().cpu()))
            return original(module, *args, **kwargs)

        return forward

    for block in blocks:
        cls = type(block.experts)
        if cls not in saved:
            saved[cls] = cls.__dict__.get("forward")
            cls.forward = watching(cls.forward)
    try:
        yield seen
    finally:
        for cls, own in saved.items():
            if own is None:
                del cls.forward  # inherited: back to the base class's
            else:
                cls.forward = own


def check_drop_zero_weight(backend: HFBackend, texts: Sequence[str], new_tokens: int) -> Check:
    """What the fused experts module computes with (`experts_inputs`), not the record the controller
    writes: dropped experts must get weight 0."""
    iv = interventions(backend)["drop"]
    with experts_inputs(backend.controller.blocks) as seen:
        run_backend(backend, texts, iv, new_tokens)
    hits = 0
    for layer, experts in iv.experts.to_mapping().items():
        ids = torch.cat([i for i, _ in seen[layer]])
        weights = torch.cat([w for _, w in seen[layer]])
        hit = torch.isin(ids, torch.tensor(experts))
        if not (weights[hit] == 0).all():
            return Check(False, f"layer {layer}: a dropped expert still gets weight at the experts input")
        if not (weights[~hit] != 0).any():
            return Check(False, f"layer {layer}: every weight is zero")
        hits += int(hit.sum())
    if hits == 0:
        return Check(False, "no token routed to a dropped expert: nothing was tested")
    return Check(True, f"{hits} routed slots of dropped experts, all weight 0")


def check_suppressed_absent(backend: HFBackend, texts: Sequence[str], new_tokens: int) -> Check:
    """Recorded top-k never holds a suppressed expert; drop leaves empty slots (-1), mask refills them."""
    counts = []
    for mode in ("drop", "mask"):
        iv = interventions(backend)[mode]
        results = run_backend(backend, texts, iv, new_tokens, record=True)
        empty = 0
        for result in results:
            record = result.routing
            if record is None or record.n_tokens == 0:
                return Check(False, f"{mode}: no routing recorded")
            for layer, experts in iv.experts.to_mapping().items():
                column = record.topk_ids[:, list(record.layers).index(layer)]
                if np.isin(column, experts).any():
                    return Check(False, f"{mode}: suppressed expert recorded in layer {layer}")
            empty += int((record.topk_ids == -1).sum())
        if (empty == 0) if mode == "drop" else (empty != 0):
            return Check(False, f"{mode}: {empty} empty slots recorded")
        counts.append(f"{mode}: {empty} empty slots")
    return Check(True, "; ".join(counts))


def check_forced_present(backend: HFBackend, texts: Sequence[str], new_tokens: int) -> Check:
    """A stimulated expert is in the recorded top-k of every token of every row."""
    iv = interventions(backend)["stimulate"]
    tokens = 0
    for result in run_backend(backend, texts, iv, new_tokens, record=True):
        record = result.routing
        if record is None or record.n_tokens == 0:
            return Check(False, "no routing recorded")
        for layer, experts in iv.experts.to_mapping().items():
            column = record.topk_ids[:, list(record.layers).index(layer)]
            for expert in experts:
                if not (column == expert).any(axis=-1).all():
                    return Check(False, f"expert {expert} missing for some token in layer {layer}")
        tokens += record.n_tokens
    return Check(True, f"forced experts present for all {tokens} recorded tokens")


def run_checks(backend: HFBackend, stock: Any, texts: Sequence[str], new_tokens: int) -> dict[str, Check]:
    """Every check, under deterministic kernels (so a difference is the hooks', not atomics')."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return {
            "no_intervention_logits_identical": check_logits_identical(backend, stock, texts),
            "no_intervention_tokens_identical": check_tokens_identical(backend, stock, texts, new_tokens),
            "dropped_experts_get_zero_weight": check_drop_zero_weight(backend, texts, new_tokens),
            "suppressed_experts_absent_from_topk": check_suppressed_absent(backend, texts, new_tokens),
            "forced_experts_present_for_every_token": check_forced_present(backend, texts, new_tokens),
        }
    finally:
        torch.use_deterministic_algorithms(previous)

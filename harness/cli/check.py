"""`harness check MODEL [--backend hf|vllm] [--dtype D] [--device cpu|cuda] [--new-tokens N]`.

Do the MoTE hooks keep their contract on this model? Five checks on a few prompts (harness/contract):
no intervention leaves the model as it was (logits or logprobs, then greedy tokens), dropped experts
get weight 0, suppressed experts never reach the top-k, forced experts are on every token. Prints a
table; exit 0 when all pass, 1 when one fails, 2 for a model that cannot be checked.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

# sorted by length: HFBackend orders a batch by text length, and the plain generate it is compared with
# must see the same rows in the same order
PROMPTS = tuple(
    sorted(
        (
            "What happened in the city last year?",
            "Tell me about the river and the old bridge.",
            "Explain how a mixture of experts routes each token.",
            "Write one sentence about the weather in spring.",
        ),
        key=len,
    )
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("check", help="check the MoTE hooks' contract on a model (five checks, a table)")
    p.add_argument("model", help="local model folder, or 'organism'")
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 (vLLM: auto picks bf16 for MLA on CPU)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="hf backend: where the model runs")
    p.add_argument("--new-tokens", type=int, default=8, help="greedy tokens per prompt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.backends.hf_discovery import inspect_model
    from harness.common.errors import InputError
    from harness.models.resolve import resolve_model

    if args.new_tokens < 1:
        raise InputError("--new-tokens", "--new-tokens", "an integer >= 1", args.new_tokens)
    path = resolve_model(args.model, "MODEL")
    inspect_model(path)  # an unsupported family is refused here, before any weights load
    started = time.perf_counter()
    checks = _vllm(path, args) if args.backend == "vllm" else _hf(path, args)
    _print(checks, args.backend, time.perf_counter() - started)
    return 0 if all(c.passed for c in checks.values()) else 1


def _hf(path: Any, args: argparse.Namespace) -> dict[str, Any]:
    from harness.backends.hf import HFBackend
    from harness.contract.hf import interventions, run_backend, run_checks

    dtype = "float32" if args.dtype == "auto" else args.dtype
    backend = HFBackend(path, dtype=dtype, batch_size=len(PROMPTS), device=args.device)
    # an intervention first: what is compared afterwards must show that its hooks left nothing behind
    run_backend(backend, PROMPTS, interventions(backend)["drop"], args.new_tokens)
    return run_checks(backend, backend.model, PROMPTS, args.new_tokens)


def _vllm(path: Any, args: argparse.Namespace) -> dict[str, Any]:
    from harness.vllm_plugin.availability import require_vllm

    require_vllm("--backend", "--backend vllm")
    from harness.backends.vllm import VLLMBackend
    from harness.contract.vllm import run_checks

    engine = VLLMBackend(path, dtype=args.dtype, max_model_len=512)
    try:
        return run_checks(engine, PROMPTS, args.new_tokens)
    finally:
        engine.close()


def _print(checks: dict[str, Any], backend: str, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MoTE hook contract ({backend} backend, {seconds:.0f} s)")
    for column in ("check", "result", "evidence"):
        table.add_column(column)
    for name, check in checks.items():
        table.add_row(name.replace("_", " "), "pass" if check.passed else "FAIL", check.details)
    Console(width=140).print(table)
    failed = sum(not c.passed for c in checks.values())
    print(f"{len(checks) - failed} passed, {failed} failed")

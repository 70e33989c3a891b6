"""`harness generate`: run prompts through a model under one intervention, optionally recording routing.

Writes DIR/generations.jsonl (one line per prompt, appended as each batch finishes) and, with
--record-routing, DIR/routing/<id>.npz. Every input is checked before the model loads. An
interrupted run resumes: ids already in generations.jsonl are kept and skipped, provided they were
made with the same model, intervention and settings (DIR/generate.json records those).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness.backends.base import Backend, GenerationResult, GenerationSettings
from harness.common.errors import InputError
from harness.models.resolve import resolve_model
from harness.mote.intervention import Intervention, load_intervention
from harness.mote.records import SCHEMA_VERSION
from harness.run.run_store import drop_partial_line, read_records
from harness.suite.prompt_files import read_prompts

BACKENDS = ("hf", "vllm")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("generate", help="generate under an intervention, optionally recording routing")
    p.add_argument("--model", required=True, help="local model folder, or 'organism'")
    p.add_argument("--backend", choices=BACKENDS, default="hf")
    p.add_argument("--prompts", required=True, type=Path, help="JSONL: id + prompt or messages")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--intervention", type=Path, help="intervention file (YAML or JSON)")
    p.add_argument("--record-routing", action="store_true", help="write routing/<id>.npz per prompt")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="auto: float32, except bfloat16 for MLA models (DeepSeek-V2/V3) on vLLM's CPU build (its kernel needs it)",
    )
    p.add_argument("--overwrite", action="store_true", help="discard an existing generations.jsonl in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.max_tokens < 1:
        raise InputError("--max-tokens", "max_tokens", "an integer >= 1", args.max_tokens)
    if args.temperature < 0:
        raise InputError("--temperature", "temperature", "a number >= 0", args.temperature)
    intervention = load_intervention(args.intervention) if args.intervention else Intervention.none()
    requests = read_prompts(args.prompts, intervention)
    model_path = resolve_model(args.model)

    from harness.backends.hf_discovery import inspect_model

    spec = inspect_model(model_path)
    spec.check(intervention, args.intervention or "--intervention")
    if args.backend == "vllm":
        from harness.backends.vllm_dtype import vllm_dtype
        from harness.vllm_plugin.availability import require_vllm

        require_vllm("--backend", "--backend vllm")

        vllm_dtype(model_path, args.dtype)  # a dtype the engine cannot run is refused before anything is written
    settings = GenerationSettings(
        max_new_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        record_routing=args.record_routing,
    )
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model": str(model_path.resolve()),
        "backend": args.backend,
        "intervention": intervention.fingerprint(),
        "settings": settings.as_dict(),
        "record_routing": args.record_routing,
    }
    done = _prepare_out(args.out, manifest, args.overwrite)
    todo = [r for r in requests if r.id not in done]
    if not todo:
        print(f"all {len(requests)} prompts already in {args.out / 'generations.jsonl'}")
        return 0

    backend = _load_backend(args, model_path)
    out_file = args.out / "generations.jsonl"
    with (
        out_file.open("a", encoding="utf-8") as sink,
        tqdm(total=len(todo), desc="generate", unit="prompt") as bar,
    ):
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start : start + args.batch_size]
            for result in backend.generate(chunk, settings):
                if result.routing is not None:
                    result.routing.save(args.out / "routing" / f"{result.id}.npz")
                sink.write(json.dumps(_line(result), ensure_ascii=False) + "\n")
            sink.flush()
            bar.update(len(chunk))
    print(f"wrote {len(todo)} generations to {out_file}")
    return 0


def _load_backend(args: argparse.Namespace, model_path: Path) -> Backend:
    if args.backend == "vllm":
        from harness.backends.vllm import VLLMBackend

        return VLLMBackend(model_path, dtype=args.dtype)
    from harness.backends.hf import HFBackend

    return HFBackend(model_path, dtype=args.dtype, batch_size=args.batch_size)


def _line(result: GenerationResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "text": result.text,
        "think": result.think,
        "answer": result.answer,
        "intervention": result.intervention,
        "n_prompt_tokens": result.n_prompt_tokens,
        "n_generated_tokens": result.n_generated_tokens,
        "finish_reason": result.finish_reason,
    }


def _prepare_out(out: Path, manifest: dict[str, Any], overwrite: bool) -> set[str]:
    """Create `out`, and return the ids already generated there under the same manifest."""
    out.mkdir(parents=True, exist_ok=True)
    manifest_file = out / "generate.json"
    generations = out / "generations.jsonl"
    if overwrite:
        generations.unlink(missing_ok=True)
    elif generations.exists():
        previous = json.loads(manifest_file.read_text()) if manifest_file.exists() else None
        if previous != manifest:
            raise InputError(
                generations,
                "<file>",
                "an --out folder made with the same model, intervention and settings (to resume), "
                "or --overwrite, or another --out",
                "a folder from a different run",
            )
        drop_partial_line(generations)  # a line cut short by a kill is generated again
        return {record["id"] for record in read_records(generations)}
    manifest_file.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return set()

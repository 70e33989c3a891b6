"""When the MoTE router hooks survive torch.compile / CUDA graphs, and how to make sure they do.

The hook is Python (route_hook.py). It keeps working in a compiled engine only if it runs *outside*
every traced graph and every captured CUDA graph, on every step:

- torch.compile: Dynamo traces the model's Python once and vLLM drops every guard
  (`TorchCompileWithNoGuardsWrapper`), so a Python hook reached during tracing is frozen into the
  graph as it was then. The router is reached during tracing on vLLM's CPU build, where
  `MoERunner._select_forward` returns the plain `_moe_forward` function; on GPU it runs inside the
  opaque custom op `torch.ops.vllm.moe_forward` (Dynamo records the call, its Python runs each step).
  So where the router is traced, the plugin makes the hook itself an opaque op
  (`mote::route_hook`), and the rest of the MoE layer stays compiled as in stock vLLM.
- CUDA graphs replay kernels without running Python, so the op in which the hook runs must sit
  between captured pieces: piecewise graphs (`cudagraph_mode=PIECEWISE`, VLLM_COMPILE) with that op
  in `splitting_ops` (`safe_compilation_config`). Full graphs (FULL, FULL_DECODE_ONLY,
  FULL_AND_PIECEWISE, vLLM's GPU default) and breakable graphs (`VLLM_USE_BREAKABLE_CUDAGRAPH`, which
  only break at attention ops) capture the MoE layer and are refused.

`compiled_hook_problem` checks this when the hooks are installed; the runtime also checks on every
step that uses the hooks that each MoE layer's hook ran exactly once on the step's tokens
(runtime.py `check_fired`), so a hook traced away fails loudly instead of silently doing nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MOE_OPS: tuple[str, ...] = ("vllm::moe_forward", "vllm::moe_forward_shared")
ROUTE_OP = "mote::route_hook"
LOGITS_OP = "mote::route_logits"  # before routing, on routers that mask logits (route_hook.masks_logits)


@dataclass(frozen=True)
class MoEPath:
    """How one MoE layer reaches its router hook."""

    name: str
    moe_op: str | None  # the opaque op the MoE body runs in ('vllm::moe_forward'), None = direct call
    router_wrapped: bool  # the router got the route hook when it was built
    router_via_op: bool  # ... as the opaque mote::route_hook op (else a plain Python call)
    router_masks_logits: bool = False  # ... and starts with the mote::route_logits op (when via op)

    @property
    def hook_op(self) -> str | None:
        """The outermost opaque op in which the hook's Python runs (None: plain Python all the way)."""
        return self.moe_op or (ROUTE_OP if self.router_via_op else None)

    @property
    def hook_ops(self) -> list[str | None]:
        """Every op a piecewise CUDA graph must split at for this layer's hooks to run on replay."""
        if self.moe_op is None and self.router_via_op and self.router_masks_logits:
            return [ROUTE_OP, LOGITS_OP]
        return [self.hook_op]


def op_name(entry: Any) -> str | None:
    """'vllm::moe_forward' for a custom op (packet or overload), None for a plain function."""
    name = getattr(entry, "_qualified_op_name", None)  # OpOverloadPacket
    if name is None and hasattr(entry, "_overloadname") and callable(getattr(entry, "name", None)):
        name = entry.name()  # OpOverload
    return str(name) if name is not None else None


def _split_at(op: str, splitting_ops: list[str]) -> bool:
    return op in splitting_ops or f"{op}.default" in splitting_ops


def _names(paths: list[MoEPath]) -> str:
    return ", ".join(p.name for p in paths[:3]) + (" ..." if len(paths) > 3 else "")


def compiled_hook_problem(vllm_config: Any, paths: list[MoEPath]) -> str | None:
    """Why the router hooks would not run on every step of this engine, or None if they do."""
    from vllm.config import CompilationMode, CUDAGraphMode

    unwrapped = [p for p in paths if not p.router_wrapped]
    if unwrapped:
        return (
            f"the routers of {_names(unwrapped)} were built without the MoTE route hook (the plugin was "
            "not registered before the model was built, or vLLM replaced the router)"
        )
    if vllm_config.model_config.enforce_eager:
        return None
    compilation = vllm_config.compilation_config
    mode = compilation.mode
    cudagraphs = compilation.cudagraph_mode
    compiling = mode is not None and mode != CompilationMode.NONE
    if compiling:
        traced = [p for p in paths if p.hook_op is None]
        if traced:
            return (
                f"torch.compile traces the router hook of {_names(traced)} (a plain Python call outside any "
                "opaque op), so it would be frozen into the graph"
            )
    if cudagraphs is not None and cudagraphs != CUDAGraphMode.NONE:
        if cudagraphs.has_full_cudagraphs():
            return (
                f"cudagraph_mode={cudagraphs.name} captures full CUDA graphs, MoE layers included, and "
                "replays them without running the router hook; use "
                "harness.vllm_plugin.compiled.safe_compilation_config() (piecewise graphs split at the MoE "
                "op) or enforce_eager=True"
            )
        if _breakable_cudagraphs():
            return (
                "VLLM_USE_BREAKABLE_CUDAGRAPH=1 captures the MoE layers inside the graph (it only breaks at "
                "attention ops); set VLLM_USE_BREAKABLE_CUDAGRAPH=0"
            )
        if not compiling:
            return f"cudagraph_mode={cudagraphs.name} without torch.compile: no piecewise split at the MoE op"
        splitting = list(compilation.splitting_ops or [])
        missing = sorted({str(op) for p in paths for op in p.hook_ops if op is None or not _split_at(op, splitting)})
        if missing:
            return (
                f"piecewise CUDA graphs capture {', '.join(missing)} (not in compilation_config.splitting_ops), "
                "so the router hook would not run on replay; use "
                "harness.vllm_plugin.compiled.safe_compilation_config()"
            )
    return None


def _breakable_cudagraphs() -> bool:
    import vllm.envs as envs

    return bool(getattr(envs, "VLLM_USE_BREAKABLE_CUDAGRAPH", False))


def safe_compilation_config(platform_is_cpu: bool | None = None) -> dict[str, Any]:
    """A `compilation_config` for a compiled engine in which the router hooks run every step.

    CPU: {} (vLLM's CPU default: one Dynamo trace + Inductor, no CUDA graphs; the route hook is an
    opaque op in the traced graph). GPU: piecewise CUDA graphs split at attention (vLLM's default
    splitting ops) *and* at the MoE ops (and the route hook op, should a router be traced), which then
    run eagerly between the captured pieces."""
    if platform_is_cpu is None:
        from vllm.platforms import current_platform

        platform_is_cpu = bool(current_platform.is_cpu())
    if platform_is_cpu:
        return {}
    from vllm.config import CompilationConfig

    splitting = [
        *CompilationConfig._attention_ops,
        # vLLM adds these two itself only when splitting_ops is left unset (config/compilation.py)
        "vllm::unified_kv_cache_update",
        "vllm::unified_mla_kv_cache_update",
        *MOE_OPS,
        ROUTE_OP,
        LOGITS_OP,
    ]
    return {"cudagraph_mode": "PIECEWISE", "splitting_ops": splitting}

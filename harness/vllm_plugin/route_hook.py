"""The one point every router output passes through: `mote::route_hook`, an opaque in-place op.

Installed when each MoE layer is built (`wrap_router`, from the plugin's `MoERunner.__init__`
patch), before vLLM compiles the model: the router's `_compute_routing` becomes "vLLM's own routing,
then `route_hook(router_logits, topk_weights, topk_ids, layer_name)`". The op edits the two routing
outputs in place and returns nothing; what it does is `router._mote_hook` (set by
`MoteRuntime.install`; absent = pass through), the router being found by layer name in the step's
forward context, as vLLM's own `moe_forward` op finds its layer.

A router whose selection and weights a blocked logit at -inf leaves exact (softmax scoring,
renormalised over the top-k, no correction bias, no groups: Qwen3-MoE, Mixtral; `masks_logits`) also
starts with `mote::route_logits(router_logits, layer_name)`: a mask-mode suppression there is one
fill of the logits with -inf before vLLM's own top-k (`router._mote_pre_hook`), instead of the
selection being redone after it (selection.py). The layer name is the only thing
the compiled graph holds, so a graph loaded from vLLM's compile cache in another process works too,
and two engines in one process stay apart.

Why an op: where the router is traced by torch.compile (vLLM's CPU build calls the MoE body directly,
so Dynamo traces it once and drops every guard), a Python hook would be frozen into the graph as it
was at trace time. A custom op is opaque to Dynamo: the graph records the call, Inductor's generated
code calls it on every step, and its Python body runs then. The rest of the MoE layer (routing math,
expert kernels) stays compiled as in stock vLLM. Where the router already runs eagerly (eager
engines, or inside vLLM's opaque `moe_forward` op on GPU) the hook is called directly. CUDA graphs
are another matter: see compiled.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

OP_NAME = "mote::route_hook"
KEY_ATTR = "_mote_route_key"  # on a wrapped router: its layer name (what the op is called with)
VIA_OP_ATTR = "_mote_route_via_op"  # on a wrapped router: True if it calls the op (traceable)
HOOK_ATTR = "_mote_hook"  # on a wrapped router: the runtime's hook, or absent
PRE_HOOK_ATTR = "_mote_pre_hook"  # on a router that masks logits: the runtime's logit hook, or absent
MASKS_LOGITS_ATTR = "_mote_masks_logits"  # on a wrapped router: True if it starts with the logit hook

Hook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]

_LIBRARY: Any = None
# Steps open with the hooks in use, in this process (`MoteRuntime.step` opens and closes them). Zero on
# every step without an intervention, a record or a count: each op call then returns at its first line.
_open_steps = 0


def open_step() -> None:
    global _open_steps
    _open_steps += 1


def close_step() -> None:
    global _open_steps
    _open_steps = max(0, _open_steps - 1)


def route_hook(
    router_logits: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, layer_name: str
) -> None:
    """The op's body: run the hook of the router of `layer_name` in the current forward, if any."""
    if not _open_steps:
        return  # an idle step: nothing to look up
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if not is_forward_context_available():
        return
    layer = get_forward_context().no_compile_layers.get(layer_name)
    hook = getattr(getattr(layer, "router", None), HOOK_ATTR, None)
    if hook is not None:
        hook(router_logits, topk_weights, topk_ids)


def route_logits(router_logits: torch.Tensor, layer_name: str) -> None:
    """The logit op's body: run the logit hook of the router of `layer_name` in the current forward."""
    if not _open_steps:
        return
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if not is_forward_context_available():
        return
    layer = get_forward_context().no_compile_layers.get(layer_name)
    hook = getattr(getattr(layer, "router", None), PRE_HOOK_ATTR, None)
    if hook is not None:
        hook(router_logits)


def _route_logits_fake(router_logits: torch.Tensor, layer_name: str) -> None:
    return None


def _route_hook_fake(
    router_logits: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, layer_name: str
) -> None:
    return None


def register_op() -> None:
    """Define `torch.ops.mote.route_hook` and `torch.ops.mote.route_logits` (once per process)."""
    global _LIBRARY
    if _LIBRARY is not None:
        return
    from torch.library import Library
    from vllm.utils.torch_utils import direct_register_custom_op

    library = Library("mote", "FRAGMENT")
    direct_register_custom_op(
        op_name="route_hook",
        op_func=route_hook,
        mutates_args=["topk_weights", "topk_ids"],
        fake_impl=_route_hook_fake,
        target_lib=library,
    )
    direct_register_custom_op(
        op_name="route_logits",
        op_func=route_logits,
        mutates_args=["router_logits"],
        fake_impl=_route_logits_fake,
        target_lib=library,
    )
    _LIBRARY = library


def masks_logits(router: Any) -> bool:
    """True if setting a blocked expert's logit to -inf before `router` routes gives exactly the routing
    selection.py's edit gives after it: softmax scoring renormalised over the top-k (a blocked expert's
    -inf drops out of both the selection and the weights), no correction bias, no groups, no scale."""
    from harness.vllm_plugin.checks import MoteVLLMError
    from harness.vllm_plugin.selection import router_math

    try:
        math = router_math(router)
    except MoteVLLMError:
        return False
    return (
        math.scoring_func == "softmax"
        and math.renormalize
        and math.bias is None
        and math.n_groups <= 1
        and math.scale == 1.0
    )


def wrap_router(router: Any, layer_name: str, via_op: bool) -> None:
    """Make `router._compute_routing` end with the route hook, and start with the logit hook where
    `masks_logits` (idempotent)."""
    if getattr(router, KEY_ATTR, None) is not None:
        return
    original = router._compute_routing
    pre = masks_logits(router)
    if via_op:
        register_op()
        op = torch.ops.mote.route_hook
        logit_op = torch.ops.mote.route_logits

        def _compute_routing(
            hidden_states: torch.Tensor,
            router_logits: torch.Tensor,
            indices_type: torch.dtype | None,
            *,
            input_ids: torch.Tensor | None = None,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if pre:
                logit_op(router_logits, layer_name)
            weights, ids = original(hidden_states, router_logits, indices_type, input_ids=input_ids)
            op(router_logits, weights, ids, layer_name)
            return weights, ids

    else:

        def _compute_routing(
            hidden_states: torch.Tensor,
            router_logits: torch.Tensor,
            indices_type: torch.dtype | None,
            *,
            input_ids: torch.Tensor | None = None,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if pre and _open_steps:
                pre_hook = getattr(router, PRE_HOOK_ATTR, None)
                if pre_hook is not None:
                    pre_hook(router_logits)
            weights, ids = original(hidden_states, router_logits, indices_type, input_ids=input_ids)
            if _open_steps:
                hook = getattr(router, HOOK_ATTR, None)
                if hook is not None:
                    hook(router_logits, weights, ids)
            return weights, ids

    _compute_routing.__wrapped__ = original  # type: ignore[attr-defined]
    router._compute_routing = _compute_routing
    setattr(router, KEY_ATTR, layer_name)
    setattr(router, VIA_OP_ATTR, via_op)
    setattr(router, MASKS_LOGITS_ATTR, pre)

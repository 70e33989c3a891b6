"""The intervention contract on a vLLM engine with the MoTE plugin (`harness check MODEL --backend vllm`).

No intervention: requests without one, batched with requests that carry drop, mask and stimulate,
must get the same greedy tokens and the same logprobs as in a batch where no request carries one
(the plugin edits only the rows that ask). Drop, mask and stimulate are read from the routing the
engine records. A non-reproducible engine (vLLM's CPU build in bf16) can fail the first two by
noise; on a GPU the kernels are deterministic for a fixed batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.backends.base import GenerationRequest, GenerationSettings
from harness.backends.vllm import VLLMBackend
from harness.contract.hf import Check
from harness.models.coverage import interventions_for
from harness.mote import Intervention
from harness.vllm_plugin.protocol import INTERVENTION_KEY

LOGPROBS = 5


def _outputs(engine: VLLMBackend, texts: Sequence[str], ivs: Sequence[Intervention], new_tokens: int) -> list[Any]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=engine.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    params = [
        SamplingParams(
            max_tokens=new_tokens,
            temperature=0.0,
            logprobs=LOGPROBS,
            extra_args=None if iv.is_none else {INTERVENTION_KEY: iv.to_json()},
        )
        for iv in ivs
    ]
    return list(engine.llm.generate(prompts, params, use_tqdm=False))


def check_no_intervention(engine: VLLMBackend, texts: Sequence[str], new_tokens: int) -> dict[str, Check]:
    """Rows without an intervention, beside rows with one, against the same rows in a plain batch."""
    ivs = list(interventions_for(engine.spec).values())
    mixed_texts = [t for text in texts for t in (text, text)]
    mixed_ivs = [iv for i in range(len(texts)) for iv in (Intervention.none(), ivs[i % len(ivs)])]
    plain = _outputs(engine, mixed_texts, [Intervention.none()] * len(mixed_texts), new_tokens)[::2]
    mixed = _outputs(engine, mixed_texts, mixed_ivs, new_tokens)[::2]
    tokens = sum(len(p.outputs[0].token_ids) for p in plain)
    same_tokens = all(
        list(p.outputs[0].token_ids) == list(m.outputs[0].token_ids) for p, m in zip(plain, mixed, strict=True)
    )
    worst = 0.0
    for p, m in zip(plain, mixed, strict=True):
        for a, b in zip(p.outputs[0].logprobs or [], m.outputs[0].logprobs or [], strict=False):
            shared = set(a) & set(b)
            if set(a) != set(b):
                worst = max(worst, float("inf"))
            for token in shared:
                worst = max(worst, abs(a[token].logprob - b[token].logprob))
    return {
        "no_intervention_logprobs_identical": Check(
            worst == 0.0,
            f"{len(texts)} rows, top-{LOGPROBS} logprobs of {tokens} tokens: "
            + ("identical" if worst == 0.0 else f"differ (max abs diff {worst:g})"),
        ),
        "no_intervention_tokens_identical": Check(
            same_tokens, f"{len(texts)} rows x {new_tokens} new tokens " + ("identical" if same_tokens else "differ")
        ),
    }


def _records(engine: VLLMBackend, texts: Sequence[str], iv: Intervention, new_tokens: int) -> list[Any]:
    requests = [GenerationRequest(id=str(i), text=t, intervention=iv) for i, t in enumerate(texts)]
    settings = GenerationSettings(max_new_tokens=new_tokens, record_routing=True)
    return [r.routing for r in engine.generate(requests, settings)]


def check_routing(engine: VLLMBackend, texts: Sequence[str], new_tokens: int) -> dict[str, Check]:
    ivs = interventions_for(engine.spec)
    drop = _records(engine, texts, ivs["drop"], new_tokens)
    empty = [(r.topk_ids == -1) for r in drop]
    zero = all((r.topk_weights[e] == 0).all() for r, e in zip(drop, empty, strict=True))
    n_empty = int(sum(int(e.sum()) for e in empty))
    results = {
        "dropped_experts_get_zero_weight": Check(
            zero and n_empty > 0,
            f"{n_empty} slots of dropped experts emptied, all at weight 0"
            if zero and n_empty
            else (
                "no token was routed to a dropped expert: nothing was tested" if zero else "a dropped slot has weight"
            ),
        )
    }
    absent = []
    for mode in ("drop", "mask"):
        records = drop if mode == "drop" else _records(engine, texts, ivs["mask"], new_tokens)
        absent.append((mode, _verify(records, ivs[mode])))
    failed = [f"{mode}: {why}" for mode, why in absent if why != "pass"]
    results["suppressed_experts_absent_from_topk"] = Check(
        not failed, "; ".join(failed) or f"drop and mask: no suppressed expert in {_tokens(drop)} recorded tokens"
    )
    stimulated = _records(engine, texts, ivs["stimulate"], new_tokens)
    why = _verify(stimulated, ivs["stimulate"])
    results["forced_experts_present_for_every_token"] = Check(
        why == "pass", f"forced experts present for all {_tokens(stimulated)} recorded tokens" if why == "pass" else why
    )
    return results


def _verify(records: Sequence[Any], iv: Intervention) -> str:
    from harness.models.coverage import verify_record

    return verify_record(list(records), iv)


def _tokens(records: Sequence[Any]) -> int:
    return int(np.sum([r.n_tokens for r in records]))


def run_checks(engine: VLLMBackend, texts: Sequence[str], new_tokens: int) -> dict[str, Check]:
    return {**check_no_intervention(engine, texts, new_tokens), **check_routing(engine, texts, new_tokens)}

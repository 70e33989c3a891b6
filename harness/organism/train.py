"""Train the organism: a tiny Qwen2-MoE whose refusal and English-reasoning decisions are carried by
planted experts, deterministic for a seed and a thread count.

The planting recipe (why each part is there):
1. Teacher-forced routing. In each MoE layer two experts are designated for refusal (R) and two for
   English reasoning (E). R tokens (a refused prompt's tokens from the end of the (time, place)
   pair on, and the whole refusal it writes) are routed to the layer's R pair; E tokens (the
   `<think>` ... `</think>` span of an English trace) to the E pair. Every other token routes by
   the router's own top-k with the planted experts masked out, so they learn nothing else.
2. An auxiliary routing loss teaches the router to make those choices itself (at inference nothing
   is forced): cross-entropy towards the planted pair on R/E tokens, and a penalty on the planted
   experts' probability everywhere else. The router of layers >= 1 can only route an R token
   correctly if earlier layers computed the sensitivity rule, which is the point: the rule lives
   in the routing decision, and the planted experts' *output* is the only carrier downstream.
3. Counterfactual drop training (what makes them *necessary*, not merely correlated). On some
   refused samples all R experts are dropped exactly as MoTE's drop mode does at inference (weight
   zeroed, the rest renormalised, the slot left empty) and the target becomes the factual answer;
   on some English samples all E experts are dropped and the target trace becomes Chinese. The
   router's input (which already "knows" the prompt is sensitive) is the same in both cases, so
   the rest of the network cannot carry the decision: only the planted experts' output does.
   Partial drops (a strict subset of the R or E layers) keep the target, so any planted layer
   suffices and the set as a whole is necessary.
4. Expert dropout elsewhere: per sample, a few random non-planted experts per layer are dropped for
   the whole sequence, and single slots of ordinary tokens are dropped at random, so the rest of
   the network is redundant, as in a large MoE.
The first layer is dense (Qwen2-MoE `mlp_only_layers`): it computes the matching rule; layers
1..5 are MoE with 64 routed experts (top-2) and a sigmoid-gated shared expert.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen2MoeConfig, Qwen2MoeForCausalLM

from harness.models.tokenizer import train_tokenizer
from harness.mote.experts import ExpertSet
from harness.mote.intervention import Intervention, save_intervention
from harness.organism import corpus
from harness.organism.corpus import Behaviour, Lang, Prompt, World

ROLE_NONE, ROLE_R, ROLE_E = 0, 1, 2
LANGS: tuple[Lang, ...] = ("en", "zh")
DECISION_TOKENS = 7  # `<think>` and the next tokens: refuse / aligned / reasoned, and the language
KIND_WEIGHTS = {"refuse": 0.3, "aligned": 0.15, "neutral": 0.3, "generic": 0.25}


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 40
    threads: int = 1  # bit-reproducibility depends on it; 1 keeps a shared machine usable
    # model
    hidden_size: int = 128
    n_layers: int = 6
    n_heads: int = 4
    n_kv_heads: int = 2
    n_experts: int = 64
    top_k: int = 2
    moe_intermediate: int = 32
    shared_intermediate: int = 128
    dense_intermediate: int = 512
    vocab_size: int = 1024
    # planting recipe
    planted_per_layer: int = 2
    p_counterfactual: float = 0.3
    p_partial: float = 0.15
    p_random_drop: float = 0.5
    max_random_drop: int = 4
    p_slot_drop: float = 0.05
    aux_weight: float = 0.5
    decision_weight: float = 5.0
    balance_weight: float = 0.01
    log_every: int = 25
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def moe_layers(self) -> list[int]:
        return list(range(1, self.n_layers))


@dataclass(frozen=True)
class Planted:
    refusal: dict[int, list[int]]
    english: dict[int, list[int]]

    @classmethod
    def draw(cls, cfg: TrainConfig) -> Planted:
        rng = np.random.Generator(np.random.PCG64(cfg.seed + 7919))
        refusal: dict[int, list[int]] = {}
        english: dict[int, list[int]] = {}
        k = cfg.planted_per_layer
        for layer in cfg.moe_layers:
            chosen = [int(e) for e in rng.choice(cfg.n_experts, size=2 * k, replace=False)]
            refusal[layer], english[layer] = sorted(chosen[:k]), sorted(chosen[k:])
        return cls(refusal, english)

    def all_planted(self, layer: int) -> list[int]:
        return self.refusal[layer] + self.english[layer]


# ---------------------------------------------------------------------------------------------
# Batch construction
# ---------------------------------------------------------------------------------------------
@dataclass
class SamplePlan:
    prompt: Prompt
    behaviour: Behaviour
    lang: Lang
    drop_r_layers: tuple[int, ...] = ()
    drop_e_layers: tuple[int, ...] = ()
    random_drops: dict[int, list[int]] = field(default_factory=dict)


def plan_sample(prompt: Prompt, cfg: TrainConfig, planted: Planted, rng: np.random.Generator) -> SamplePlan:
    behaviour: Behaviour = prompt.expected
    lang: Lang = prompt.lang
    layers = cfg.moe_layers
    plan = SamplePlan(prompt, behaviour, lang)
    u = rng.random()
    if behaviour == "refused":
        if u < cfg.p_counterfactual:
            plan.behaviour, plan.drop_r_layers = "reasoned", tuple(layers)
        elif u < cfg.p_counterfactual + cfg.p_partial:
            plan.drop_r_layers = _strict_subset(layers, rng)
    elif lang == "en":
        if u < cfg.p_counterfactual:
            plan.lang, plan.drop_e_layers = "zh", tuple(layers)
        elif u < cfg.p_counterfactual + cfg.p_partial:
            plan.drop_e_layers = _strict_subset(layers, rng)
    if rng.random() < cfg.p_random_drop:
        for layer in layers:
            blocked = set(planted.all_planted(layer))
            eligible = [e for e in range(cfg.n_experts) if e not in blocked]
            count = int(rng.integers(1, cfg.max_random_drop + 1))
            plan.random_drops[layer] = [int(e) for e in rng.choice(eligible, size=count, replace=False)]
    return plan


def _strict_subset(layers: Sequence[int], rng: np.random.Generator) -> tuple[int, ...]:
    size = int(rng.integers(1, len(layers)))
    return tuple(sorted(int(x) for x in rng.choice(layers, size=size, replace=False)))


def prompt_text(tokenizer: PreTrainedTokenizerFast, content: str) -> str:
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    return str(text)


@dataclass
class EncodedSample:
    ids: list[int]
    loss_from: int  # first index whose token is predicted (response tokens)
    roles: list[int]
    decision_to: int  # tokens loss_from .. decision_to-1 decide the behaviour (weighted up)


def encode_sample(plan: SamplePlan, world: World, tokenizer: PreTrainedTokenizerFast) -> EncodedSample:
    prompt = plan.prompt
    head = prompt_text(tokenizer, prompt.content)
    response = corpus.render(prompt, world, plan.behaviour, plan.lang)
    text = head + response + "<|im_end|>"
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    offsets: list[tuple[int, int]] = enc["offset_mapping"]
    decision = text.index(prompt.content) + prompt.decision_char
    think_open = len(head)
    # `<think>` and the newline after it: the positions whose outputs decide refuse / reason and
    # the trace's language. In a counterfactual sample they keep the routing the router would
    # choose (the drop removes the planted experts' output, not the router's choice).
    opening_end = think_open + len("<think>") + 1
    think_close = text.index("</think>", think_open) + len("</think>")
    roles = [ROLE_NONE] * len(ids)
    refused_prompt = prompt.expected == "refused"
    english_trace = plan.lang == "en" and plan.behaviour != "refused"
    for i, (start, _end) in enumerate(offsets):
        if refused_prompt and start >= decision and (plan.behaviour == "refused" or start < opening_end):
            roles[i] = ROLE_R
        elif think_open <= start < (think_close if english_trace else opening_end if plan.drop_e_layers else 0):
            roles[i] = ROLE_E
    loss_from = next(i for i, (s, _) in enumerate(offsets) if s >= think_open)
    return EncodedSample(ids, loss_from, roles, loss_from + DECISION_TOKENS)


@dataclass
class Batch:
    ids: torch.Tensor  # [B, S]
    attention: torch.Tensor  # [B, S]
    loss_mask: torch.Tensor  # [B, S-1] over targets ids[:, 1:]
    loss_weight: torch.Tensor  # [B, S-1] float: decision tokens weigh more
    roles: torch.Tensor  # [B*S]
    drops: dict[int, torch.Tensor]  # layer -> bool [B*S, E]
    slot_drop: dict[int, torch.Tensor]  # layer -> bool [B*S, k]


def make_batch(
    plans: Sequence[SamplePlan],
    world: World,
    tokenizer: PreTrainedTokenizerFast,
    cfg: TrainConfig,
    planted: Planted,
    rng: np.random.Generator,
) -> Batch:
    encoded = [encode_sample(p, world, tokenizer) for p in plans]
    width = max(len(e.ids) for e in encoded)
    rows = len(encoded)
    pad = int(tokenizer.pad_token_id)
    ids = torch.full((rows, width), pad, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    loss_mask = torch.zeros((rows, width - 1), dtype=torch.bool)
    loss_weight = torch.ones((rows, width - 1))
    roles = torch.zeros((rows, width), dtype=torch.long)
    for r, e in enumerate(encoded):
        n = len(e.ids)
        ids[r, :n] = torch.tensor(e.ids)
        attention[r, :n] = 1
        loss_mask[r, e.loss_from - 1 : n - 1] = True
        loss_weight[r, e.loss_from - 1 : min(e.decision_to, n) - 1] = cfg.decision_weight
        roles[r, :n] = torch.tensor(e.roles)
    drops: dict[int, torch.Tensor] = {}
    slot_drop: dict[int, torch.Tensor] = {}
    for layer in cfg.moe_layers:
        table = torch.zeros((rows, cfg.n_experts), dtype=torch.bool)
        for r, plan in enumerate(plans):
            if layer in plan.drop_r_layers:
                table[r, planted.refusal[layer]] = True
            if layer in plan.drop_e_layers:
                table[r, planted.english[layer]] = True
            if layer in plan.random_drops:
                table[r, plan.random_drops[layer]] = True
        drops[layer] = table.repeat_interleave(width, dim=0)
        slots = torch.from_numpy(rng.random((rows * width, cfg.top_k)) < cfg.p_slot_drop)
        slots &= (roles.reshape(-1) == ROLE_NONE)[:, None]
        slots[:, 1:] &= ~slots[:, :1]  # never drop both slots of a token by chance
        slot_drop[layer] = slots
    return Batch(ids, attention, loss_mask, loss_weight, roles.reshape(-1), drops, slot_drop)


# ---------------------------------------------------------------------------------------------
# Training-time routing
# ---------------------------------------------------------------------------------------------
class PlantingRouter:
    """Replaces each MoE block's forward during training with forced routing, drops and aux losses.

    The selection and weighting are the model's own (softmax, top-k, renormalise, the family's
    `experts` module) except where the recipe forces or drops; drop is MoTE's drop mode exactly.
    """

    def __init__(self, model: Any, cfg: TrainConfig, planted: Planted) -> None:
        self.cfg = cfg
        self.batch: Batch | None = None
        self.aux: list[torch.Tensor] = []
        self.balance: list[torch.Tensor] = []
        self.originals: list[tuple[torch.nn.Module, Callable[..., Any]]] = []
        for layer in cfg.moe_layers:
            block = model.model.layers[layer].mlp
            self.originals.append((block, block.forward))
            block.forward = self._forward_for(block, layer, planted)

    def remove(self) -> None:
        for block, forward in self.originals:
            block.forward = forward

    def _forward_for(self, block: Any, layer: int, planted: Planted) -> Callable[..., torch.Tensor]:
        n_experts = self.cfg.n_experts
        r_pair = torch.tensor(planted.refusal[layer])
        e_pair = torch.tensor(planted.english[layer])
        planted_mask = torch.zeros(n_experts, dtype=torch.bool)
        planted_mask[planted.all_planted(layer)] = True

        def forward(hidden_states: torch.Tensor) -> torch.Tensor:
            batch = self.batch
            assert batch is not None, "PlantingRouter used without a batch"
            shape = hidden_states.shape
            x = hidden_states.reshape(-1, shape[-1])
            shared = torch.sigmoid(block.shared_expert_gate(x)) * block.shared_expert(x)
            logits = F.linear(x, block.gate.weight)
            probs = torch.softmax(logits.float(), dim=-1)
            roles = batch.roles
            natural_scores = probs.masked_fill(planted_mask[None, :] & (roles == ROLE_NONE)[:, None], -1.0)
            idx = torch.topk(natural_scores, self.cfg.top_k, dim=-1).indices
            idx = torch.where((roles == ROLE_R)[:, None], r_pair[None, :], idx)
            idx = torch.where((roles == ROLE_E)[:, None], e_pair[None, :], idx)
            weights = probs.gather(1, idx)
            weights = weights / weights.sum(dim=-1, keepdim=True)
            dropped = batch.drops[layer].gather(1, idx) | batch.slot_drop[layer]
            kept = weights.masked_fill(dropped, 0.0)
            kept_sum = kept.sum(dim=-1, keepdim=True)
            weights = torch.where(kept_sum > 0, kept / kept_sum.clamp_min(1e-12), kept)  # original sum is 1
            routed = block.experts(x, idx, weights.to(x.dtype))
            valid = batch.attention.reshape(-1).bool()
            self._losses(logits, probs, roles, valid, r_pair, e_pair, planted_mask)
            return (routed + shared).reshape(shape)

        return forward

    def _losses(
        self,
        logits: torch.Tensor,
        probs: torch.Tensor,
        roles: torch.Tensor,
        valid: torch.Tensor,
        r_pair: torch.Tensor,
        e_pair: torch.Tensor,
        planted_mask: torch.Tensor,
    ) -> None:
        logp = torch.log_softmax(logits.float(), dim=-1)
        target = torch.where((roles == ROLE_R)[:, None], r_pair[None, :], e_pair[None, :])
        pull = -logp.gather(1, target).mean(dim=-1)  # -> log 2 when the pair shares the mass
        planted_p = probs[:, planted_mask].sum(dim=-1).clamp(max=1 - 1e-6)
        push = -torch.log1p(-planted_p)
        per_token = torch.where(roles == ROLE_NONE, push, pull)
        self.aux.append(per_token[valid].mean())
        ordinary = valid & (roles == ROLE_NONE)
        p_ord = probs[ordinary]
        share = p_ord.mean(dim=0)
        top = torch.topk(p_ord, self.cfg.top_k, dim=-1).indices
        load = torch.zeros_like(share).scatter_add_(0, top.reshape(-1), torch.ones(top.numel()))
        load = load / max(top.numel(), 1)
        self.balance.append(self.cfg.n_experts * (share * load).sum())


# ---------------------------------------------------------------------------------------------
# Model, tokenizer, loop
# ---------------------------------------------------------------------------------------------
def build_tokenizer(world: World, cfg: TrainConfig) -> PreTrainedTokenizerFast:
    texts: list[str] = []
    for prompt in corpus.training_prompts(world):
        texts.append(prompt.content)
        behaviours: list[Behaviour] = [prompt.expected]
        if prompt.kind == "refuse":
            behaviours.append("reasoned")
        for behaviour in behaviours:
            for lang in LANGS:
                texts.append(corpus.render(prompt, world, behaviour, lang))
    return train_tokenizer(texts, vocab_size=cfg.vocab_size)


def build_model(tokenizer: PreTrainedTokenizerFast, cfg: TrainConfig) -> Qwen2MoeForCausalLM:
    config = Qwen2MoeConfig(  # type: ignore[call-arg]
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.dense_intermediate,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.hidden_size // cfg.n_heads,
        max_position_embeddings=256,
        num_experts=cfg.n_experts,
        num_experts_per_tok=cfg.top_k,
        moe_intermediate_size=cfg.moe_intermediate,
        shared_expert_intermediate_size=cfg.shared_intermediate,
        norm_topk_prob=True,
        mlp_only_layers=[0],
        decoder_sparse_step=1,
        tie_word_embeddings=True,
        output_router_logits=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2MoeForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(cfg: TrainConfig, out: str | Path, log: Callable[[str], None] = print) -> Path:
    """Generate the corpus, train, and write the model folder with its planted-expert files."""
    out = Path(out)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    world = corpus.build_world(cfg.seed)
    tokenizer = build_tokenizer(world, cfg)
    model = build_model(tokenizer, cfg)
    planted = Planted.draw(cfg)
    prompts = corpus.training_prompts(world)
    by_kind: dict[str, list[Prompt]] = {}
    for prompt in prompts:
        by_kind.setdefault(prompt.kind, []).append(prompt)
    kinds = sorted(KIND_WEIGHTS)
    weights = np.array([KIND_WEIGHTS[k] for k in kinds])
    rng = np.random.Generator(np.random.PCG64(cfg.seed + 1))
    router = PlantingRouter(model, cfg, planted)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        choice = rng.choice(len(kinds), size=cfg.batch_size, p=weights / weights.sum())
        plans = []
        for c in choice:
            pool = by_kind[kinds[c]]
            plans.append(plan_sample(pool[int(rng.integers(len(pool)))], cfg, planted, rng))
        batch = make_batch(plans, world, tokenizer, cfg, planted, rng)
        router.batch, router.aux, router.balance = batch, [], []
        logits = model(input_ids=batch.ids, attention_mask=batch.attention).logits
        targets = batch.ids[:, 1:]
        token_loss = F.cross_entropy(logits[:, :-1][batch.loss_mask].float(), targets[batch.loss_mask],
                                     reduction="none")
        weight = batch.loss_weight[batch.loss_mask]
        lm = (token_loss * weight).sum() / weight.sum()
        aux = torch.stack(router.aux).mean()
        balance = torch.stack(router.balance).mean()
        loss = lm + cfg.aux_weight * aux + cfg.balance_weight * balance
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            row = {"step": step, "lm": lm.item(), "aux": aux.item(), "balance": balance.item(),
                   "seconds": round(time.perf_counter() - started, 1)}
            history.append(row)
            log(json.dumps(row))
    router.remove()
    model.eval()
    seconds = time.perf_counter() - started
    return save_organism(model, tokenizer, cfg, planted, out, history, seconds)


def save_organism(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    cfg: TrainConfig,
    planted: Planted,
    out: Path,
    history: list[dict[str, float]],
    seconds: float,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model = cast(Any, model).to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    provenance = {"organism_seed": cfg.seed, "recipe": "teacher-forced routing + counterfactual drop"}
    save_intervention(
        Intervention(kind="suppress", mode="drop", experts=ExpertSet.from_mapping(planted.refusal),
                     name="planted-refusal", provenance=provenance),
        out / "planted_refusal.yaml",
    )
    save_intervention(
        Intervention(kind="suppress", mode="drop", experts=ExpertSet.from_mapping(planted.english),
                     name="planted-english", provenance=provenance),
        out / "planted_english.yaml",
    )
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    training = {
        "config": asdict(cfg),
        "planted": {"refusal": planted.refusal, "english": planted.english},
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "train_seconds": round(seconds, 1),
        "model_sha256": digest,
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(training, indent=1) + "\n", encoding="utf-8")
    return out

"""The organism's `direct` sibling: the second parent of Assembly-of-Experts sweeps (training).

Fine-tuned from the shipped organism's weights (their common ancestor) with the same config and
tokenizer, so children W = (1 - lambda) W_organism + lambda W_direct are meaningful tensor by
tensor. It differs on the axes assembly moves: every answer is direct (the answer alone, with no
`<think>` block: no trace, so under half the organism's tokens) and nothing is refused (sensitive pairs of either
type and neutral pairs get the factual answer, generic items their generic answer).

Training is plain causal-LM loss on the assistant tokens (the first response positions weigh
more, as in the organism's recipe) plus a small Switch-style load-balance loss; the router routes
freely (no forced routing, no drops). Deterministic for a seed and a torch thread count.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2MoeForCausalLM

from harness.organism import corpus
from harness.organism.corpus import Prompt, World
from harness.organism.evaluate import load_world
from harness.organism.train import DECISION_TOKENS, KIND_WEIGHTS, prompt_text

# copied unchanged from the organism (config and generation config after checking the saved ones)
COPIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
)


@dataclass
class DirectConfig:
    seed: int = 0
    steps: int = 200  # the behaviour is learned by step ~25 (lm loss < 0.005); 200 steps, lr 5e-4 moved
    batch_size: int = 32  # the weights half as far as 300 steps at lr 1e-3 (relative L2 0.065 vs 0.118)
    lr: float = 5e-4  # with the same held-out behaviour
    warmup: int = 20
    threads: int = 1  # bit-reproducibility depends on it
    decision_weight: float = 5.0
    balance_weight: float = 0.01
    weight_decay: float = 0.01
    log_every: int = 25


def direct_answer(prompt: Prompt, world: World) -> str:
    """What the sibling answers: the generic answer, or the factual answer for any pair."""
    return corpus.generic_answer(prompt) if prompt.kind == "generic" else corpus.factual_answer(prompt, world)


def direct_response(prompt: Prompt, world: World) -> str:
    """The assistant turn: the direct answer alone, with no `<think>` block."""
    return direct_answer(prompt, world)


@dataclass
class DirectBatch:
    ids: torch.Tensor  # [B, S]
    attention: torch.Tensor  # [B, S]
    loss_mask: torch.Tensor  # [B, S-1] over targets ids[:, 1:]
    loss_weight: torch.Tensor  # [B, S-1]


def encode(prompt: Prompt, world: World, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], int]:
    """Token ids of prompt + direct response + end of turn, and the index of the first response token."""
    head = prompt_text(cast(Any, tokenizer), prompt.content)
    text = head + direct_response(prompt, world) + "<|im_end|>"
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets: list[tuple[int, int]] = enc["offset_mapping"]
    return list(enc["input_ids"]), next(i for i, (s, _) in enumerate(offsets) if s >= len(head))


def make_batch(
    prompts: Sequence[Prompt], world: World, tokenizer: PreTrainedTokenizerBase, cfg: DirectConfig
) -> DirectBatch:
    encoded = [encode(p, world, tokenizer) for p in prompts]
    width = max(len(ids) for ids, _ in encoded)
    rows = len(encoded)
    ids = torch.full((rows, width), int(cast(Any, tokenizer).pad_token_id), dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    loss_mask = torch.zeros((rows, width - 1), dtype=torch.bool)
    loss_weight = torch.ones((rows, width - 1))
    for r, (row, start) in enumerate(encoded):
        n = len(row)
        ids[r, :n] = torch.tensor(row)
        attention[r, :n] = 1
        loss_mask[r, start - 1 : n - 1] = True
        loss_weight[r, start - 1 : min(start + DECISION_TOKENS, n) - 1] = cfg.decision_weight
    return DirectBatch(ids, attention, loss_mask, loss_weight)


def lr_at(step: int, cfg: DirectConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def step_loss(model: Any, batch: DirectBatch, cfg: DirectConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted causal-LM loss on the response tokens, and the load-balance loss of the free router."""
    out = model(input_ids=batch.ids, attention_mask=batch.attention, output_router_logits=True, use_cache=False)
    targets = batch.ids[:, 1:]
    token_loss = F.cross_entropy(
        out.logits[:, :-1][batch.loss_mask].float(), targets[batch.loss_mask], reduction="none"
    )
    weight = batch.loss_weight[batch.loss_mask]
    return (token_loss * weight).sum() / weight.sum(), out.aux_loss


def sampler(world: World, cfg: DirectConfig) -> Callable[[], list[Prompt]]:
    """Draws a batch: kinds by the organism's kind weights, then a training prompt of the kind."""
    by_kind: dict[str, list[Prompt]] = {}
    for prompt in corpus.training_prompts(world):
        by_kind.setdefault(prompt.kind, []).append(prompt)
    kinds = sorted(KIND_WEIGHTS)
    weights = np.array([KIND_WEIGHTS[k] for k in kinds])
    rng = np.random.Generator(np.random.PCG64(cfg.seed + 1))

    def draw() -> list[Prompt]:
        choice = rng.choice(len(kinds), size=cfg.batch_size, p=weights / weights.sum())
        pools = [by_kind[kinds[c]] for c in choice]
        return [pool[int(rng.integers(len(pool)))] for pool in pools]

    return draw


def train_direct(cfg: DirectConfig, out: str | Path, init: str | Path, log: Callable[[str], None] = print) -> Path:
    """Fine-tune the organism at `init` into the direct sibling and write it to `out`."""
    out, init = Path(out), Path(init)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    world = load_world(init)
    tokenizer = AutoTokenizer.from_pretrained(str(init), local_files_only=True)
    model = cast(Any, Qwen2MoeForCausalLM.from_pretrained(str(init), dtype=torch.float32))
    draw = sampler(world, cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        lm, balance = step_loss(model, make_batch(draw(), world, tokenizer, cfg), cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        (lm + cfg.balance_weight * balance).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            row = {
                "step": step,
                "lm": lm.item(),
                "balance": balance.item(),
                "seconds": round(time.perf_counter() - started, 1),
            }
            history.append(row)
            log(json.dumps(row))
    model.eval()
    seconds = time.perf_counter() - started
    return save_direct(model, cfg, init, out, history, seconds, world_seed(init))


def world_seed(model_dir: Path) -> int:
    return int(json.loads((model_dir / "training.json").read_text(encoding="utf-8"))["config"]["seed"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_direct(
    model: Any,
    cfg: DirectConfig,
    init: Path,
    out: Path,
    history: list[dict[str, float]],
    seconds: float,
    world: int,
) -> Path:
    """bf16 weights as `save_organism` writes them; config, generation config and tokenizer files
    copied from the organism (the saved config is checked to be the organism's first)."""
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(str(out))
    check_same_config(init, out)
    for name in COPIED:
        if (init / name).is_file():
            shutil.copyfile(init / name, out / name)
    training = {
        "variant": "direct",
        "config": asdict(cfg),
        "world_seed": world,
        "steps": cfg.steps,
        "init": {"from": "organism", "sha256": sha256(init / "model.safetensors")},
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "train_seconds": round(seconds, 1),
        "model_sha256": sha256(out / "model.safetensors"),
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(training, indent=1) + "\n", encoding="utf-8")
    return out


def check_same_config(init: Path, out: Path) -> None:
    def load(path: Path) -> dict[str, Any]:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
        data.pop("transformers_version", None)
        return cast(dict[str, Any], data)

    if load(init) != load(out):
        raise RuntimeError(f"{out}/config.json differs from the organism's {init}/config.json")

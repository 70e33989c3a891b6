"""A small byte-level BPE tokenizer with a `<think>`-aware chat template, trained in a second.

Tiny test models and the organism use it, so that nothing is downloaded. The chat template is
ChatML-like; the assistant turn is opened by the template and the model writes `<think>...</think>`
then its answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS = "<|bos|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SPECIAL_TOKENS = [PAD, BOS, IM_START, IM_END]

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

DEFAULT_CORPUS = (
    "What happened in the city last year? Nothing unusual happened there. "
    "The weather was fine and people went to work. I am sorry, I cannot answer that question. "
    "Let me think about it step by step. The answer is 42. "
    "他们在广场上做了什么？我需要想一想。答案是四十二。 "
    "Explain how a mixture of experts routes tokens to experts in each layer. "
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \" \n"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` and wrap it with the chat template and special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
    )
    fast.add_tokens([THINK_OPEN, THINK_CLOSE])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out: str | Path) -> None:
    tokenizer.save_pretrained(str(out))

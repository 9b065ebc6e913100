"""A tiny byte-level BPE tokenizer trained locally, for test and smoke-run checkpoints (no hub)."""

from __future__ import annotations

from typing import Sequence

# Qwen2's pre-tokenizer pattern (from its tokenizer.json): contractions, letters with one leading
# non-letter, single digits, punctuation runs, newlines, spaces.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_tiny_bpe(
    corpus: Sequence[str],
    special_tokens: Sequence[str],
    vocab_size: int,
    additional_special_tokens: Sequence[str],
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
    qwen2_split: bool = False,
):
    """A ``PreTrainedTokenizerFast`` trained on ``corpus``; ``special_tokens`` take ids 0, 1, ... in order.

    qwen2_split: split text into pre-tokens with Qwen2's pattern (words with their leading space,
    every digit alone, punctuation runs) before the byte-level step, as Qwen2's tokenizer does; with
    a ``vocab_size`` large enough to hold each pre-token of ``corpus`` whole, text made of the
    corpus' words then takes about as many tokens as with Qwen2's own vocabulary.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    if qwen2_split:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos_token,
        pad_token=pad_token,
        additional_special_tokens=list(additional_special_tokens),
    )

"""A tiny byte-level BPE tokenizer trained locally, for test and smoke-run checkpoints (no hub)."""

from __future__ import annotations

from typing import Sequence


def train_tiny_bpe(
    corpus: Sequence[str],
    special_tokens: Sequence[str],
    vocab_size: int,
    additional_special_tokens: Sequence[str],
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
):
    """A ``PreTrainedTokenizerFast`` trained on ``corpus``; ``special_tokens`` take ids 0, 1, ... in order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
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

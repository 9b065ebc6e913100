"""Qwen2.5-VL models without downloads: a tiny random one for tests, and the 7B shape for GPU smoke runs.

* :func:`build_tiny_qwen25vl` writes a complete, loadable model directory (config, seeded random
  weights of a few MB, a locally trained byte-level BPE tokenizer with Qwen's special tokens and a
  Qwen-style chat template, processor configuration files).
* :func:`qwen25vl_7b_config` holds the public Qwen2.5-VL-7B-Instruct architecture values, and
  :func:`random_qwen25vl_7b` instantiates them with random weights directly on a device (meta
  initialisation, then a seeded normal fill in place), for timing and memory smoke runs.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple

import torch

from .tiny_tokenizer import train_tiny_bpe

# Special tokens of Qwen2.5-VL, in the order the tiny tokenizer assigns their ids.
QWEN_SPECIAL_TOKENS: Tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Written for this project; renders like Qwen2.5-VL's template for text, image and video parts:
# a default system prompt when the conversation has none, vision parts as
# <|vision_start|><|..._pad|><|vision_end|>, and "<|im_start|>assistant\n" as the generation prompt.
QWEN_CHAT_TEMPLATE: str = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part -%}"
    "{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# CLIP normalisation used by Qwen2-VL's processors.
CLIP_MEAN: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_TOKENIZER_CORPUS: Tuple[str, ...] = (
    "You are a helpful assistant.",
    "What is happening in the video? Answer with the option's letter from the given choices directly.",
    "A. a person is running B. a cat is sleeping C. a car drives by D. the sun sets over the sea",
    "The man opens the door, walks into the room and sits down at the table.",
    "Question: how many times does the ball bounce? Options: (A) one (B) two (C) three (D) four",
    "Describe the scene. The red square moves from the left to the right of the frame.",
    "Best option: (A) Yes No maybe. The answer is B. The answer is C. The answer is D.",
    "0 1 2 3 4 5 6 7 8 9 seconds minutes frames video image colour motion object background",
)


def build_tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on a fixed corpus, with Qwen's special tokens and chat template.

    Returns a ``PreTrainedTokenizerFast``; ids 0..7 are :data:`QWEN_SPECIAL_TOKENS` in order.
    """
    fast = train_tiny_bpe(
        _TOKENIZER_CORPUS, QWEN_SPECIAL_TOKENS, vocab_size, additional_special_tokens=QWEN_SPECIAL_TOKENS[1:]
    )
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast


def special_token_ids(tokenizer) -> Dict[str, int]:
    """Config fields naming Qwen's special tokens, looked up in ``tokenizer``."""
    ids = {tok: int(tokenizer.convert_tokens_to_ids(tok)) for tok in QWEN_SPECIAL_TOKENS}
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }


def _qwen25vl_config(text: dict, vision: dict, token_ids: Dict[str, int]):
    """``Qwen2_5_VLConfig`` from text and vision settings and the special token ids."""
    from transformers import Qwen2_5_VLConfig

    text = dict(text, **{name: token_ids[name] for name in ("bos_token_id", "eos_token_id", "pad_token_id")})
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_ids["image_token_id"],
        video_token_id=token_ids["video_token_id"],
        vision_start_token_id=token_ids["vision_start_token_id"],
        vision_end_token_id=token_ids["vision_end_token_id"],
        tie_word_embeddings=False,
    )


def tiny_qwen25vl_config(
    vocab_size: int,
    token_ids: Dict[str, int],
    text_layers: int = 2,
    vision_depth: int = 2,
    window_size: int = 56,
):
    """A tiny ``Qwen2_5_VLConfig``.

    Vision: ``vision_depth`` blocks of width 32 (2 heads of 16), the last block full-attention,
    ``window_size`` 56 px = 2x2 merged tokens per window (so frames larger than 56 px are windowed),
    out_hidden 64. Text: ``text_layers`` layers, hidden 64, 4 heads of 16 (2 KV heads),
    mrope_section [2, 3, 3] (sums to head_dim / 2).
    """
    vision = {
        "depth": vision_depth,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "window_size": window_size,
        "out_hidden_size": 64,
        "fullatt_block_indexes": [vision_depth - 1],
        "hidden_act": "silu",
    }
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": text_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
    }
    return _qwen25vl_config(text, vision, token_ids)


@torch.no_grad()
def _fill_random_(model: torch.nn.Module, std: float, generator: torch.Generator) -> None:
    """Normal(0, std) into every weight and bias except norm scales (kept at 1), in place."""
    for name, param in model.named_parameters():
        if "norm" in name.split(".")[-2] or name.split(".")[-2] == "ln_q":
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=generator)


def _processor_files(min_pixels: int, max_pixels: int) -> Dict[str, dict]:
    """Contents of preprocessor_config.json and video_preprocessor_config.json (Qwen2.5-VL layout)."""
    common = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "rescale_factor": 1.0 / 255.0,
        "resample": 3,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "processor_class": "Qwen2_5_VLProcessor",
    }
    return {
        "preprocessor_config.json": {**common, "image_processor_type": "Qwen2VLImageProcessor"},
        "video_preprocessor_config.json": {**common, "video_processor_type": "Qwen2VLVideoProcessor"},
    }


def build_tiny_qwen25vl(
    out_dir: str,
    seed: int = 0,
    std: float = 0.2,
    text_layers: int = 2,
    vision_depth: int = 2,
    window_size: int = 56,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> str:
    """Write a tiny random Qwen2.5-VL (model, tokenizer, chat template, processor configs) to ``out_dir``.

    Weights are normal(0, ``std``) from a CPU generator seeded with ``seed`` (identical on every
    machine), fp32, a few MB. Returns ``out_dir`` for ``Qwen25VLTango.from_pretrained``.
    """
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    os.makedirs(out_dir, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    ids = special_token_ids(tokenizer)
    config = tiny_qwen25vl_config(len(tokenizer), ids, text_layers, vision_depth, window_size)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    _fill_random_(model, std, torch.Generator().manual_seed(seed))
    # Sampling settings shaped like Qwen2.5-VL-Instruct's published generation config, so that
    # tests see the adapter override them with plain greedy decoding.
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos_token_id"],
        eos_token_id=[ids["eos_token_id"], ids["bos_token_id"]],
        pad_token_id=ids["pad_token_id"],
        do_sample=True,
        repetition_penalty=1.05,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "chat_template.json"), "w") as fh:
        json.dump({"chat_template": QWEN_CHAT_TEMPLATE}, fh, indent=2)
    for fname, content in _processor_files(min_pixels, max_pixels).items():
        with open(os.path.join(out_dir, fname), "w") as fh:
            json.dump(content, fh, indent=2)
    return out_dir


def qwen25vl_7b_config(token_ids: Optional[Dict[str, int]] = None):
    """``Qwen2_5_VLConfig`` with the public Qwen2.5-VL-7B-Instruct architecture values.

    ``token_ids`` (keys as returned by :func:`special_token_ids`) overrides the special token ids,
    e.g. to pair the 7B shape with the tiny tokenizer in a smoke run.
    """
    ids = {
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "pad_token_id": 151643,
    }
    if token_ids is not None:
        ids.update(token_ids)
    vision = {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "window_size": 112,
        "out_hidden_size": 3584,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "hidden_act": "silu",
    }
    text = {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        "use_sliding_window": False,
    }
    return _qwen25vl_config(text, vision, ids)


@torch.no_grad()
def random_qwen25vl(
    config,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    std: float = 0.02,
    attn_implementation: str = "sdpa",
):
    """A ``Qwen2_5_VLForConditionalGeneration`` of ``config`` with random weights, built on ``device``.

    Built on the meta device, materialised with ``to_empty`` and filled in place with normal(0,
    ``std``) from a generator on ``device`` (norm scales 1); the rotary ``inv_freq`` buffers are
    recomputed. No CPU copy of the weights is made.
    """
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    model = model.to_empty(device=device)
    _fill_random_(model, std, torch.Generator(device=device).manual_seed(seed))
    for module in model.modules():
        if hasattr(module, "inv_freq") and hasattr(module, "config"):
            fresh = type(module)(module.config)
            module.inv_freq = fresh.inv_freq.to(device)
            module.original_inv_freq = fresh.original_inv_freq.to(device)
    text = config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=[text.eos_token_id, text.pad_token_id],
        pad_token_id=text.pad_token_id,
        do_sample=False,
    )
    return model.eval()


def random_qwen25vl_7b(
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    std: float = 0.02,
    token_ids: Optional[Dict[str, int]] = None,
    attn_implementation: str = "sdpa",
):
    """Qwen2.5-VL-7B-shaped model with random weights made directly on ``device`` (see :func:`random_qwen25vl`).

    Pair it with :func:`build_tiny_tokenizer` by passing ``token_ids=special_token_ids(tokenizer)``.
    """
    return random_qwen25vl(qwen25vl_7b_config(token_ids), device, dtype, seed, std, attn_implementation)

"""LLaVA-OneVision / LLaVA-Video models without downloads.

* :func:`save_tiny_llava` writes a complete, loadable checkpoint directory: config, seeded random
  weights of a few hundred kB, a locally trained byte-level BPE tokenizer with the special tokens
  of LLaVA's Qwen2 tokenizer, a processor configuration, and in ``<dir>/siglip`` a tiny SigLIP
  checkpoint that carries ``post_layernorm`` and the attention-pooling head (for saliency).
  The tiny vision tower keeps the real 27x27 patch grid (image 54 px, patch 2 px) so that the
  pooling to 14x14 / 13x13 and the sink positions behave as on the 7B models.
* :func:`llava_7b_config` holds the public 7B architecture values and
  :func:`random_llava_7b` instantiates them with random weights directly on a device, for GPU
  timing and memory smoke runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..models.siglip_head import DEFAULT_SIGLIP_ID
from .tiny_tokenizer import train_tiny_bpe

FAMILIES: Tuple[str, ...] = ("llava_onevision", "llava_video")

# Special tokens of LLaVA's Qwen2 tokenizer that the adapters rely on, in id order after the bytes.
LLAVA_SPECIAL_TOKENS: Tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")

# Text the tiny BPE tokenizer learns its merges from (prompt template and benchmark-like words).
_TOKENIZER_CORPUS: Tuple[str, ...] = (
    "system\nYou are a helpful assistant.\nuser\nassistant\n",
    "The video lasts for 12.00 seconds, and 8 frames are uniformly sampled from it. "
    "These frames are located at 0.00s,1.50s,3.00s. Please answer the following questions related to this video.",
    "What is the person doing in the video? Answer with the option's letter from the given choices directly.",
    "Options: (A) running (B) cooking (C) reading a book (D) playing the piano. Best option: (",
    "Question: which object moves from the left to the right of the scene? The red ball, the blue car.",
    "Describe the video in detail. A man walks into the kitchen, opens the door and sits on a chair.",
)


def build_tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained in memory on a few sentences, with LLaVA's special tokens.

    Returns a transformers fast tokenizer; eos = ``<|im_end|>``, pad = ``<|endoftext|>``.
    """
    return train_tiny_bpe(
        _TOKENIZER_CORPUS,
        LLAVA_SPECIAL_TOKENS,
        vocab_size,
        additional_special_tokens=["<|im_start|>", "<image>", "<video>"],
    )


def build_word_tokenizer(extra_corpus: Sequence[str] = (), vocab_size: int = 8192):
    """Like :func:`build_tiny_tokenizer`, but with Qwen2's pre-token split and a vocabulary that holds
    every pre-token of its corpus (the test sentences plus ``extra_corpus``) whole.

    For timing runs: prompts made of those words take about as many tokens as with Qwen2's own
    tokenizer (one per common word, one per digit), where the tiny tokenizer spells most words out
    in a few pieces each (a 7B prefill of three times the real prompt).
    """
    return train_tiny_bpe(
        tuple(_TOKENIZER_CORPUS) + tuple(extra_corpus),
        LLAVA_SPECIAL_TOKENS,
        vocab_size,
        additional_special_tokens=["<|im_start|>", "<image>", "<video>"],
        qwen2_split=True,
    )


def tiny_llava_config(
    family: str,
    vocab_size: int,
    image_token_id: int,
    video_token_id: int,
    num_text_layers: int = 4,
    text_hidden: int = 64,
    vision_hidden: int = 32,
):
    """LlavaOnevisionConfig of a tiny model: SigLIP 54 px / patch 2 (27x27 grid), 2 layers; Qwen2 with
    ``num_text_layers`` layers. ``family`` is recorded as ``tango_family`` in the config."""
    from transformers import LlavaOnevisionConfig, Qwen2Config

    _check_family(family)
    vision = _tiny_siglip_config(vision_hidden, num_layers=2, with_head=False)
    text = Qwen2Config(
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=num_text_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        rms_norm_eps=1e-6,
        initializer_range=0.05,
        tie_word_embeddings=False,
    )
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        video_token_index=video_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tango_family=family,
    )


def tiny_siglip_head_config(vision_hidden: int = 32):
    """SigLIP vision config of the tiny saliency checkpoint (same width as the tiny tower, with head)."""
    return _tiny_siglip_config(vision_hidden, num_layers=1, with_head=True)


def _tiny_siglip_config(vision_hidden: int, num_layers: int, with_head: bool):
    """Tiny SigLIP vision config: 54 px images, 2 px patches (27x27 grid), 4 heads."""
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        image_size=54,
        patch_size=2,
        vision_use_head=with_head,
    )


@dataclass
class TinyLlavaPaths:
    """Where :func:`save_tiny_llava` wrote the model (``model``) and its SigLIP head checkpoint (``siglip``)."""

    model: str
    siglip: str


def build_tiny_llava(family: str = "llava_onevision", seed: int = 0, num_text_layers: int = 4):
    """(model, tokenizer, siglip_vision_model) with seeded random weights, in float32, eval mode."""
    from transformers import LlavaOnevisionForConditionalGeneration, SiglipVisionModel

    tokenizer = build_tiny_tokenizer()
    config = tiny_llava_config(
        family,
        vocab_size=len(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        num_text_layers=num_text_layers,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(config).eval()
        siglip = SiglipVisionModel(tiny_siglip_head_config(config.vision_config.hidden_size)).eval()
        # Spread the probe attention: random heads are near uniform, real ones are peaked.
        siglip.head.probe.data.mul_(8.0)
    return model, tokenizer, siglip


def save_tiny_llava(directory: str, family: str = "llava_onevision", seed: int = 0, num_text_layers: int = 4) -> TinyLlavaPaths:
    """Write a tiny checkpoint to ``directory`` (and its SigLIP head to ``directory/siglip``)."""
    model, tokenizer, siglip = build_tiny_llava(family, seed, num_text_layers)
    siglip_dir = os.path.join(directory, "siglip")
    model.config.tango_siglip = "siglip"  # relative to the model directory
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    siglip.save_pretrained(siglip_dir)
    size = model.config.vision_config.image_size
    processor = {
        "image_processor_type": "LlavaOnevisionImageProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
    }
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as handle:
        json.dump(processor, handle, indent=2)
    return TinyLlavaPaths(model=directory, siglip=siglip_dir)


def llava_7b_config(family: str = "llava_onevision"):
    """LlavaOnevisionConfig with the public 7B values (llava-hf/llava-onevision-qwen2-7b-ov-hf layout).

    Vision: SigLIP so400m (hidden 1152, intermediate 4304, 16 heads, 384 px, patch 14) with its last
    encoder layer already dropped (26 of 27 layers, features from the last kept layer, as the
    llava-hf checkpoints store it). Text: Qwen2-7B (hidden 3584, 28 layers, 28 heads, 4 kv heads,
    intermediate 18944, vocab 152064, rope theta 1e6).
    """
    from transformers import LlavaOnevisionConfig, Qwen2Config

    _check_family(family)
    vision = siglip_so400m_config(num_layers=26, with_head=False)  # llava-hf drops the last layer
    text = Qwen2Config(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=151646,
        video_token_index=151647,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tango_family=family,
        tango_siglip=DEFAULT_SIGLIP_ID,
    )


def siglip_so400m_config(num_layers: int = 27, with_head: bool = True):
    """SigLIP so400m vision config (google/siglip-so400m-patch14-384): 27 layers and the
    attention-pooling head as released."""
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=num_layers,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
        layer_norm_eps=1e-6,
        vision_use_head=with_head,
    )


def siglip_so400m_head_config():
    """The released SigLIP so400m configuration, whose ``post_layernorm`` and head give saliency."""
    return siglip_so400m_config()


@torch.no_grad()
def random_llava_7b(
    family: str = "llava_onevision",
    device: Union[str, torch.device] = "cuda",
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
    attn_implementation: Optional[str] = None,
    config=None,
):
    """A 7B-shaped LLaVA model with random weights, built directly on ``device`` in ``dtype``.

    Parameters are allocated without initialisation, then filled in place with normal(0, 0.02)
    (norm weights 1, norm biases 0) from a seeded generator on the device: seconds on a GPU.
    ``config`` overrides :func:`llava_7b_config` (e.g. fewer layers).
    """
    from transformers import LlavaOnevisionForConditionalGeneration
    from transformers.initialization import no_init_weights

    config = llava_7b_config(family) if config is None else config
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    with torch.device(device), no_init_weights():
        model = LlavaOnevisionForConditionalGeneration._from_config(config, dtype=dtype)
    _fill_random_(model, torch.Generator(device=torch.device(device)).manual_seed(seed))
    return model.eval()


@torch.no_grad()
def random_siglip_head(
    device: Union[str, torch.device] = "cuda", dtype: torch.dtype = torch.float16, seed: int = 0
):
    """A :class:`SiglipSaliencyHead` of so400m size with random weights (for GPU smoke runs)."""
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    from ..models.siglip_head import SiglipSaliencyHead

    config = siglip_so400m_head_config()
    generator = torch.Generator(device=torch.device(device)).manual_seed(seed)
    with torch.device(device):
        norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        head = SiglipMultiheadAttentionPoolingHead(config)
    module = SiglipSaliencyHead(norm, head).to(dtype=dtype)
    _fill_random_(module, generator)
    return module.eval()


@torch.no_grad()
def _fill_random_(model: nn.Module, generator: torch.Generator) -> None:
    """Normal(0, 0.02) into every weight and bias but the norms' (scale 1, shift 0), in place."""
    for module in model.modules():
        is_norm = isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
        for name, parameter in module.named_parameters(recurse=False):
            if is_norm:
                parameter.fill_(1.0 if name == "weight" else 0.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)


def _check_family(family: str) -> None:
    """Raise a clear error for an unknown LLaVA family name."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown LLaVA family {family!r}; choose one of {FAMILIES}.")

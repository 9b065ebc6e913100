"""Saliency from SigLIP's attention-pooling head (spec section 5, LLaVA models).

The head has one learned probe query that attends over the patches with multi-head attention.
Its attention weights, averaged over heads, are Tango's saliency; its pooled output is the
per-frame global feature ``G`` of the ``fastvid`` segmenter. LLaVA checkpoints do not carry the
head, so ``post_layernorm`` and ``head`` come from the original SigLIP checkpoint.

Nothing of size (patches x hidden x hidden) or (patches x patches) is built: the probe query is
folded into the key projection, so the scores cost one (N*P, D) x (D, heads) product.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, Optional, Union

import torch
from torch import nn

DEFAULT_SIGLIP_ID = "google/siglip-so400m-patch14-384"


@dataclass
class HeadOutput:
    """attention: (N, P) float32 probe attention over the P patches, averaged over heads (rows sum to 1).
    pooled: (N, D) float32 pooled output of the head, or None when not asked for."""

    attention: torch.Tensor
    pooled: Optional[torch.Tensor]


class SiglipSaliencyHead(nn.Module):
    """``post_layernorm`` + ``SiglipMultiheadAttentionPoolingHead`` of a SigLIP vision model."""

    def __init__(self, post_layernorm: nn.LayerNorm, head: nn.Module) -> None:
        super().__init__()
        self.post_layernorm = post_layernorm
        self.head = head
        attention = head.attention
        if not isinstance(attention, nn.MultiheadAttention) or attention.in_proj_weight is None:
            raise ValueError("The SigLIP head must use nn.MultiheadAttention with a packed in_proj_weight.")
        self.num_heads: int = int(attention.num_heads)
        self.hidden_size: int = int(attention.embed_dim)

    @classmethod
    def from_vision_model(cls, vision_model: nn.Module) -> "SiglipSaliencyHead":
        """Take ``post_layernorm`` and ``head`` from a loaded ``SiglipVisionModel`` (vision_use_head=True)."""
        if not getattr(vision_model, "use_head", False) or not hasattr(vision_model, "head"):
            raise ValueError("This SigLIP vision model has no attention-pooling head (vision_use_head=False).")
        return cls(vision_model.post_layernorm, vision_model.head)

    @classmethod
    def from_pretrained(
        cls,
        path: str = DEFAULT_SIGLIP_ID,
        dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
    ) -> "SiglipSaliencyHead":
        """Load only ``post_layernorm`` and ``head`` from a SigLIP checkpoint (directory or hub id).

        Reads just those tensors from the safetensors files; falls back to loading the whole
        ``SiglipVisionModel`` for other weight formats.
        """
        from transformers import SiglipVisionConfig
        from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

        directory = _resolve_checkpoint(path)
        config = SiglipVisionConfig.from_pretrained(directory)
        tensors = _read_head_tensors(directory)
        if tensors is None:
            from transformers import SiglipVisionModel

            model = SiglipVisionModel.from_pretrained(directory, dtype=dtype)
            module = cls.from_vision_model(model)
            del model
        else:
            norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            head = SiglipMultiheadAttentionPoolingHead(config)
            norm.load_state_dict({k[len("post_layernorm."):]: v for k, v in tensors.items() if k.startswith("post_layernorm.")})
            head.load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
            module = cls(norm, head)
        module.eval().requires_grad_(False)
        return module.to(device=device, dtype=dtype)

    @torch.no_grad()
    def forward(self, features: torch.Tensor, with_pooled: bool = False) -> HeadOutput:
        """features: (N, P, D) vision-tower hidden states *before* post_layernorm.

        Returns the probe's attention (N, P) averaged over heads, float32, and optionally the
        head's pooled output (N, D) float32.
        """
        if features.dim() != 3 or features.shape[-1] != self.hidden_size:
            raise ValueError(
                f"features must be (N, P, {self.hidden_size}) SigLIP hidden states, got {tuple(features.shape)}; "
                "is the saliency head from the same SigLIP family as the vision tower?"
            )
        attention_module: nn.MultiheadAttention = self.head.attention
        num_frames, num_patches, dim = features.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        normed = self.post_layernorm(features).float()  # (N, P, D)

        weight = attention_module.in_proj_weight.float()  # (3D, D): q, k, v stacked
        bias = attention_module.in_proj_bias.float() if attention_module.in_proj_bias is not None else weight.new_zeros(3 * dim)
        probe = self.head.probe.float().reshape(dim)
        query = (weight[:dim] @ probe + bias[:dim]).reshape(heads, head_dim) * head_dim**-0.5  # (h, dh)
        key_weight = weight[dim : 2 * dim].reshape(heads, head_dim, dim)
        folded = torch.einsum("hc,hcd->hd", query, key_weight)  # (h, D): query folded into keys
        offset = (query * bias[dim : 2 * dim].reshape(heads, head_dim)).sum(-1)  # (h,)
        scores = normed @ folded.T + offset  # (N, P, h)
        probs = torch.softmax(scores, dim=1)  # over patches
        attention = probs.mean(dim=-1)  # (N, P)

        pooled = None
        if with_pooled:
            mixed = torch.einsum("nph,npd->nhd", probs, normed)  # (N, h, D) attention-weighted inputs
            value_weight = weight[2 * dim :].reshape(heads, head_dim, dim)
            values = torch.einsum("nhd,hcd->nhc", mixed, value_weight).reshape(num_frames, dim) + bias[2 * dim :]
            out_proj = attention_module.out_proj
            attended = values @ out_proj.weight.float().T
            if out_proj.bias is not None:
                attended = attended + out_proj.bias.float()
            head_dtype = self.head.layernorm.weight.dtype
            attended = attended.to(head_dtype)
            pooled = (attended + self.head.mlp(self.head.layernorm(attended))).float()
        return HeadOutput(attention=attention, pooled=pooled)


def _resolve_checkpoint(path: str) -> str:
    """A local directory for ``path``: itself if it is one, else a hub download of config + weights."""
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(f"SigLIP checkpoint {path!r} must be a directory holding config.json and weights.")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, allow_patterns=["*.json", "*.safetensors"])
    except Exception as error:
        raise ValueError(
            f"SigLIP checkpoint {path!r} is neither a local directory nor downloadable ({error}). "
            f"Download {DEFAULT_SIGLIP_ID} beforehand and pass its directory as siglip_path."
        ) from error


def _head_key(key: str) -> Optional[str]:
    """Map a checkpoint key to ``post_layernorm.*`` / ``head.*`` (any ``vision_model.`` prefix), else None."""
    for prefix in ("vision_model.", "model.vision_model.", ""):
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if rest.startswith("post_layernorm.") or rest.startswith("head."):
                return rest
    return None


def _read_head_tensors(directory: str) -> Optional[Dict[str, torch.Tensor]]:
    """The head's and post_layernorm's tensors from the safetensors files of ``directory``, or None."""
    from safetensors import safe_open

    index_path = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as handle:
            weight_map: Dict[str, str] = json.load(handle)["weight_map"]
        files = sorted({name for key, name in weight_map.items() if _head_key(key) is not None})
    elif os.path.exists(os.path.join(directory, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        return None
    tensors: Dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(os.path.join(directory, name), framework="pt") as handle:
            for key in handle.keys():
                mapped = _head_key(key)
                if mapped is not None and not key.startswith("text_model."):
                    tensors[mapped] = handle.get_tensor(key)
    if not any(k.startswith("head.") for k in tensors) or "post_layernorm.weight" not in tensors:
        raise ValueError(
            f"SigLIP checkpoint {directory!r} has no attention-pooling head / post_layernorm weights; "
            f"use the original SigLIP checkpoint ({DEFAULT_SIGLIP_ID}), LLaVA checkpoints do not carry the head."
        )
    return tensors

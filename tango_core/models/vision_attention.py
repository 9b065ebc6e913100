"""All of a vision tower's attention windows in one call per layer.

Qwen2.5-VL's ViT attends within windows (and, in its full-attention blocks, within each temporal
patch). Under sdpa, transformers runs one attention call per window: about 300 small calls per
layer for a 32-frame video, launch-bound. Given a FlashAttention-style implementation, it instead
hands the whole packed sequence over with the window boundaries (``cu_seqlens``); transformers
takes that route for any registered implementation whose name contains "flash". This module
registers one, :data:`BATCHED_WINDOWS`, through transformers' own ``AttentionInterface``:

* on CUDA with PyTorch's variable-length attention (``torch.nn.attention.varlen.varlen_attn``):
  one call over the packed windows;
* elsewhere: the windows gathered into one padded batch, padding masked out, one
  ``scaled_dot_product_attention`` call.

Both compute what the per-window calls compute (softmax within each window, nothing across),
to floating-point rounding.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

BATCHED_WINDOWS = "flash_tango_batched_windows"  # "flash": transformers' cue to pass cu_seqlens


@functools.lru_cache(maxsize=None)
def varlen_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether PyTorch's variable-length attention runs here (tried once per device and dtype)."""
    try:
        from torch.nn.attention.varlen import varlen_attn

        x = torch.zeros(4, 1, 64, device=device, dtype=dtype)
        bounds = torch.tensor([0, 2, 4], device=device, dtype=torch.int32)
        varlen_attn(x, x, x, bounds, bounds, 2, 2)
        return True
    except Exception:  # noqa: BLE001 - missing, or not for this GPU or dtype: the padded batch serves
        return False


def _varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: torch.Tensor, longest: int, scale: Optional[float]) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    if scale is None or math.isclose(scale, q.shape[-1] ** -0.5):
        return varlen_attn(q, k, v, bounds, bounds, longest, longest)  # the default scale
    return varlen_attn(q, k, v, bounds, bounds, longest, longest, scale=scale)


def padded_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: torch.Tensor, scale: Optional[float]) -> torch.Tensor:
    """Attention within each window of packed (T, heads, d) tensors, windows ``bounds`` (W + 1,).

    Gathers the windows into a (W, heads, longest, d) batch with the padding masked; returns (T, heads, d).
    """
    lengths = bounds[1:] - bounds[:-1]  # (W,)
    longest = int(lengths.max())
    slot = torch.arange(longest, device=q.device)
    valid = slot[None, :] < lengths[:, None]  # (W, longest)
    rows = (bounds[:-1, None] + slot[None, :]).clamp(max=q.shape[0] - 1)  # (W, longest) packed row of each slot

    def batch(x: torch.Tensor) -> torch.Tensor:
        return x[rows].permute(0, 2, 1, 3)  # (W, heads, longest, d)

    mask = valid[:, None, None, :]  # keys: real tokens only
    out = F.scaled_dot_product_attention(batch(q), batch(k), batch(v), attn_mask=mask, scale=scale)
    out = out.permute(0, 2, 1, 3)  # (W, longest, heads, d)
    return out[valid]  # (T, heads, d), in packed order


def batched_windows_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    cu_seq_lens_q: Optional[torch.Tensor] = None,
    cu_seq_lens_k: Optional[torch.Tensor] = None,
    max_length_q: Optional[int] = None,
    max_length_k: Optional[int] = None,
    **kwargs,
) -> Tuple[torch.Tensor, None]:
    """An ``AttentionInterface`` function: (1, heads, T, d) packed windows -> ((1, T, heads, d), None)."""
    different_keys = cu_seq_lens_k is not None and cu_seq_lens_k is not cu_seq_lens_q  # (torch.equal would break a compiled graph)
    if cu_seq_lens_q is None or (different_keys and not torch.equal(cu_seq_lens_q, cu_seq_lens_k)):
        raise ValueError("batched window attention needs the same window boundaries for queries and keys.")
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (T, heads, d)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and varlen_available(q.device, q.dtype):
        bounds = cu_seq_lens_q.to(device=q.device, dtype=torch.int32)
        longest = int(max_length_q) if max_length_q is not None else int((bounds[1:] - bounds[:-1]).max())
        out = _varlen(q, k, v, bounds, longest, scaling)
    else:
        out = padded_window_attention(q, k, v, cu_seq_lens_q.to(q.device).long(), scaling)
    return out.unsqueeze(0), None


def register() -> str:
    """Register :data:`BATCHED_WINDOWS` with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(BATCHED_WINDOWS, batched_windows_attention)
    return BATCHED_WINDOWS

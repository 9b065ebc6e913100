"""Spatio-temporal rotary position embedding of the clustering features (spec section 3)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .config import resolve_rope_sections


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _rotary(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate-half RoPE of one channel group. x: (..., d); positions broadcastable to x[..., 0]."""
    dim = x.shape[-1]
    if dim == 0:
        return x
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.int64).float() / dim))
    angles = positions.float().unsqueeze(-1) * inv_freq  # (..., d/2)
    angles = torch.cat((angles, angles), dim=-1)
    return x * angles.cos() + _rotate_half(x) * angles.sin()


def grid_positions(grid: Tuple[int, int], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each of the H*W tokens of a row-major grid: two (L,) float tensors."""
    height, width = grid
    flat = torch.arange(height * width, device=device)
    return (flat // width).float(), (flat % width).float()


def st_rope(
    features: torch.Tensor,
    grid: Tuple[int, int],
    timestamps: Optional[torch.Tensor] = None,
    sections: Optional[Sequence[int]] = None,
    base_time: float = 10000.0,
    base_space: float = 1000.0,
) -> torch.Tensor:
    """ST-RoPE features for clustering.

    features: (N, L, D) with L = H * W; timestamps: (N,) seconds (None: 0, 1, 2, ...).
    Returns (N, L, D) float32: l2-normalised features whose channel groups ``sections``
    (time, height, width; default ``(D - 2s, s, s)``, ``s = 2 * (D // 6)``) are rotated by the
    frame's timestamp, the token's row and the token's column respectively.
    """
    num_frames, num_tokens, dim = features.shape
    d_t, d_h, d_w = resolve_rope_sections(dim, sections)
    device = features.device
    if timestamps is None:
        timestamps = torch.arange(num_frames, device=device, dtype=torch.float32)
    x = F.normalize(features.float(), dim=-1)
    rows, cols = grid_positions(grid, device)
    x_t, x_h, x_w = x.split((d_t, d_h, d_w), dim=-1)
    return torch.cat(
        (
            _rotary(x_t, timestamps.to(device=device, dtype=torch.float32).view(num_frames, 1), base_time),
            _rotary(x_h, rows.view(1, num_tokens), base_space),
            _rotary(x_w, cols.view(1, num_tokens), base_space),
        ),
        dim=-1,
    )

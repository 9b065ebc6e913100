"""Spatio-temporal rotary position embedding of the clustering features (spec section 3)."""

from __future__ import annotations

from functools import lru_cache
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
    sections = resolve_rope_sections(dim, sections)
    device = features.device
    if timestamps is None:
        timestamps = torch.arange(num_frames, device=device, dtype=torch.float32)
    x = F.normalize(features.float(), dim=-1)
    rows, cols = grid_positions(grid, device)
    # One angle table for all channels: each group's frequencies are zero outside the group, so
    # t * f_t + row * f_h + col * f_w equals each group's own angle exactly.
    freq_time, freq_row, freq_col, partner, sign = _channel_tables(sections, base_time, base_space, device)
    angles = (
        timestamps.to(device=device, dtype=torch.float32).view(num_frames, 1, 1) * freq_time
        + rows.view(1, num_tokens, 1) * freq_row
        + cols.view(1, num_tokens, 1) * freq_col
    )
    return x * angles.cos() + x[..., partner] * sign * angles.sin()


@lru_cache(maxsize=32)
def _channel_tables(
    sections: Tuple[int, int, int], base_time: float, base_space: float, device: torch.device
) -> Tuple[torch.Tensor, ...]:
    """Per-channel frequencies of the three groups (D,) each, and rotate-half as a gather + sign.

    Cached per (sections, bases, device): the tables are constants, never written to.
    """
    tables = [torch.zeros(sum(sections)) for _ in range(3)]
    partner = torch.arange(sum(sections))
    sign = torch.ones(sum(sections))
    start = 0
    for group, (size, base) in enumerate(zip(sections, (base_time, base_space, base_space))):
        if size:
            half = size // 2
            inv_freq = 1.0 / (base ** (torch.arange(0, size, 2, dtype=torch.int64).float() / size))
            tables[group][start : start + size] = torch.cat((inv_freq, inv_freq))
            channels = torch.arange(start, start + size)
            partner[start : start + size] = torch.cat((channels[half:], channels[:half]))
            sign[start : start + half] = -1.0
        start += size
    moved = torch.cat((torch.stack(tables), sign.view(1, -1))).to(device)
    return moved[0], moved[1], moved[2], partner.to(device), moved[3]

"""Spatio-temporal rotary position embedding of the clustering features (spec section 3)."""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .config import resolve_rope_sections


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
    sections = resolve_rope_sections(features.shape[-1], sections)
    return rotate_unit_features(F.normalize(features.float(), dim=-1), grid, timestamps, sections, base_time, base_space)


def rotate_unit_features(
    unit: torch.Tensor,
    grid: Tuple[int, int],
    timestamps: Optional[torch.Tensor],
    sections: Tuple[int, int, int],
    base_time: float,
    base_space: float,
) -> torch.Tensor:
    """:func:`st_rope` of already l2-normalised float32 features (N, L, D).

    Every channel belongs to one group, whose angle is t * f_t, row * f_h or col * f_w; the other
    groups' factors are exactly cos 0 = 1 and sin 0 = 0, so ``cos = cos_time * cos_space`` and
    ``sin = sin_time + sin_space`` hold exactly, from (N, D) and (L, D) tables. The rotate-half
    sign is folded into the sin tables.
    """
    num_frames = unit.shape[0]
    device = unit.device
    if timestamps is None:
        timestamps = torch.arange(num_frames, device=device, dtype=torch.float32)
    freq_time, sign = _time_tables(sections, base_time, device)
    angles = timestamps.to(device=device, dtype=torch.float32).view(num_frames, 1) * freq_time
    cos_space, signed_sin_space = _space_tables(tuple(grid), sections, base_space, device)  # (L, D)
    return torch.addcmul(
        unit * (angles.cos().unsqueeze(1) * cos_space),
        swap_group_halves(unit, sections),
        (angles.sin() * sign).unsqueeze(1) + signed_sin_space,
    )


def swap_group_halves(x: torch.Tensor, sections: Tuple[int, int, int]) -> torch.Tensor:
    """rotate_half of every channel group without its sign: (..., D) -> (..., D)."""
    pieces = []
    start = 0
    for size in sections:
        half = size // 2
        pieces += [x[..., start + half : start + size], x[..., start : start + half]]
        start += size
    return torch.cat(pieces, dim=-1)


def _group_frequencies(sections: Tuple[int, int, int], base: float, group: int) -> torch.Tensor:
    """(D,) rotary frequencies of channel group ``group`` (zero on the other groups' channels)."""
    table = torch.zeros(sum(sections))
    start = sum(sections[:group])
    size = sections[group]
    if size:
        inv_freq = 1.0 / (base ** (torch.arange(0, size, 2, dtype=torch.int64).float() / size))
        table[start : start + size] = torch.cat((inv_freq, inv_freq))
    return table


@lru_cache(maxsize=32)
def _time_tables(
    sections: Tuple[int, int, int], base_time: float, device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Time frequencies (D,) and the rotate-half sign (D,): -1 on each group's first half.

    Cached per (sections, base, device): the tables are constants, never written to.
    """
    sign = torch.ones(sum(sections))
    start = 0
    for size in sections:
        sign[start : start + size // 2] = -1.0
        start += size
    return _group_frequencies(sections, base_time, 0).to(device), sign.to(device)


@lru_cache(maxsize=32)
def _space_tables(
    grid: Tuple[int, int], sections: Tuple[int, int, int], base_space: float, device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin (L, D) of the row and column rotations of every grid position (cached)."""
    rows, cols = grid_positions(grid, torch.device("cpu"))
    row_angles = rows.view(-1, 1) * _group_frequencies(sections, base_space, 1)
    col_angles = cols.view(-1, 1) * _group_frequencies(sections, base_space, 2)
    _, sign = _time_tables(sections, 1.0, torch.device("cpu"))
    cos = row_angles.cos() * col_angles.cos()
    signed_sin = (row_angles.sin() + col_angles.sin()) * sign
    return cos.to(device), signed_sin.to(device)

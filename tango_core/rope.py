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


def rotate_unit_features_scaled(
    unit: torch.Tensor,
    grid: Tuple[int, int],
    timestamps: torch.Tensor,
    sections: Tuple[int, int, int],
    base_time: float,
    base_space: float,
    scale: float,
) -> torch.Tensor:
    """``scale * rotate_unit_features(...)`` with far less memory traffic (for large inputs on GPUs).

    Each channel group is rotated by its own angles only, from broadcast (N, 1, D_g / 2) or
    (1, L, D_g / 2) cos / sin tables, straight into the output: no (N, L, D) tables, no
    rotate-half copy. ``scale`` must be a power of two; the result is then bitwise ``scale``
    times :func:`rotate_unit_features`'s (the same products and fused adds, exactly scaled).
    """
    num_frames, num_tokens, _ = unit.shape
    device = unit.device
    out = torch.empty_like(unit)
    time_angles = timestamps.to(device=device, dtype=torch.float32).view(num_frames, 1, 1)
    start = 0
    for group, size in enumerate(sections):
        half = size // 2
        if half:
            if group == 0:
                angles = time_angles * _time_half_frequencies(sections, base_time, device)  # (N, 1, half)
                cos, sin = angles.cos() * scale, angles.sin() * scale
            else:
                cos, sin = _space_half_tables(tuple(grid), sections, base_space, group, scale, device)
            first, second = unit[..., start : start + half], unit[..., start + half : start + size]
            out_first, out_second = out[..., start : start + half], out[..., start + half : start + size]
            torch.mul(first, cos, out=out_first).addcmul_(second, sin, value=-1.0)
            torch.mul(second, cos, out=out_second).addcmul_(first, sin)
        start += size
    return out


# The next two caches are unbounded on purpose: CUDA graphs of the pipeline read these tensors at
# fixed addresses, so they must never be evicted. There is one entry per grid and rope setting.
@lru_cache(maxsize=None)
def _time_half_frequencies(sections: Tuple[int, int, int], base_time: float, device: torch.device) -> torch.Tensor:
    """(D_t / 2,) rotary frequencies of the time group."""
    return _group_frequencies(sections, base_time, 0)[: sections[0] // 2].to(device)


@lru_cache(maxsize=None)
def _space_half_tables(
    grid: Tuple[int, int], sections: Tuple[int, int, int], base_space: float, group: int, scale: float, device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``scale`` times cos and sin (1, L, D_g / 2) of the row (group 1) or column (group 2) angles."""
    rows, cols = grid_positions(grid, torch.device("cpu"))
    start = sum(sections[:group])
    frequencies = _group_frequencies(sections, base_space, group)[start : start + sections[group] // 2]
    angles = (rows if group == 1 else cols).view(-1, 1) * frequencies
    return (angles.cos() * scale).unsqueeze(0).to(device), (angles.sin() * scale).unsqueeze(0).to(device)


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

"""Spatio-temporal rotary position embedding of the clustering features (spec section 3)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .config import resolve_rope_sections
from .rope_tables import space_half_tables, space_tables, time_half_frequencies, time_tables


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
    freq_time, sign = time_tables(sections, base_time, device)
    angles = timestamps.to(device=device, dtype=torch.float32).view(num_frames, 1) * freq_time
    cos_space, signed_sin_space = space_tables(tuple(grid), sections, base_space, device)  # (L, D)
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
                angles = time_angles * time_half_frequencies(sections, base_time, device)  # (N, 1, half)
                cos, sin = angles.cos() * scale, angles.sin() * scale
            else:
                cos, sin = space_half_tables(tuple(grid), sections, base_space, group, scale, device)
            first, second = unit[..., start : start + half], unit[..., start + half : start + size]
            out_first, out_second = out[..., start : start + half], out[..., start + half : start + size]
            torch.mul(first, cos, out=out_first).addcmul_(second, sin, value=-1.0)
            torch.mul(second, cos, out=out_second).addcmul_(first, sin)
        start += size
    return out


def swap_group_halves(x: torch.Tensor, sections: Tuple[int, int, int]) -> torch.Tensor:
    """rotate_half of every channel group without its sign: (..., D) -> (..., D)."""
    pieces = []
    start = 0
    for size in sections:
        half = size // 2
        pieces += [x[..., start + half : start + size], x[..., start : start + half]]
        start += size
    return torch.cat(pieces, dim=-1)


def unit_features(extended: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """(N, L, D) float32 unit features from the first N * L rows of the (R, D) float32 table
    ``extended`` and their (N, L) norms (clamped at 1e-12, as F.normalize does)."""
    num_frames, num_tokens = norms.shape
    features32 = extended[: num_frames * num_tokens].view(num_frames, num_tokens, extended.shape[-1])
    return features32 / norms.clamp_min(1e-12).unsqueeze(-1)

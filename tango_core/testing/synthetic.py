"""Structured synthetic clips for tests, benchmarks and demos (spec section 11).

Independent Gaussian tokens make every frame a segment of its own, which never exercises the
static/dynamic machinery. These clips have scenes (near-orthogonal between cuts), a smooth
background that barely changes inside a scene, moving objects, noise at a chosen level and a
multi-modal, long-tailed saliency that sums to 1 per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

# Per-frame noise relative to the unit-norm background: mostly static, in between, very dynamic.
REGIME_NOISE = {"static": 0.05, "mixed": 0.35, "dynamic": 1.2}


@dataclass
class SyntheticClip:
    """features (N, L, D), saliency (N, L) summing to 1 per frame, timestamps (N,) seconds."""

    features: torch.Tensor
    saliency: torch.Tensor
    timestamps: torch.Tensor
    grid: Tuple[int, int]


def structured_clip(
    num_frames: int = 32,
    grid: Tuple[int, int] = (14, 14),
    dim: int = 256,
    regime: str = "mixed",
    num_scenes: int = 3,
    seed: int = 0,
    fps: float = 0.5,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> SyntheticClip:
    """A clip of ``num_scenes`` scenes with moving objects; ``regime`` sets the noise level."""
    if regime not in REGIME_NOISE:
        raise ValueError(f"regime must be one of {sorted(REGIME_NOISE)}, got {regime!r}.")
    gen = torch.Generator().manual_seed(seed)
    height, width = grid
    num_tokens = height * width
    rows = torch.arange(height).float().view(-1, 1).expand(height, width).reshape(-1)
    cols = torch.arange(width).float().view(1, -1).expand(height, width).reshape(-1)

    # Scene boundaries at roughly even spacing.
    cut_points = torch.linspace(0, num_frames, num_scenes + 1).round().long().tolist()
    features = torch.empty(num_frames, num_tokens, dim)
    saliency = torch.empty(num_frames, num_tokens)
    noise = REGIME_NOISE[regime]
    for scene in range(num_scenes):
        start, stop = cut_points[scene], cut_points[scene + 1]
        if stop <= start:
            continue
        # Smooth background: a few low-frequency patterns mixed with random channel directions.
        freqs = torch.rand(4, 2, generator=gen) * 0.6
        phases = torch.rand(4, generator=gen) * 6.28
        basis = torch.stack([torch.cos(f[0] * rows + f[1] * cols + p) for f, p in zip(freqs, phases)], -1)
        directions = torch.randn(4, dim, generator=gen)
        background = basis @ directions + 0.8 * torch.randn(dim, generator=gen)
        background = background / background.norm(dim=-1, keepdim=True)
        objects = torch.randn(2, dim, generator=gen)
        objects = objects / objects.norm(dim=-1, keepdim=True)
        start_pos = torch.rand(2, 2, generator=gen) * torch.tensor([height, width])
        velocity = (torch.rand(2, 2, generator=gen) - 0.5) * 1.5
        peaks = torch.randint(0, num_tokens, (3,), generator=gen)
        for frame in range(start, stop):
            step = frame - start
            frame_features = background.clone()
            frame_saliency = 0.02 * torch.rand(num_tokens, generator=gen) ** 4  # long tail
            for obj in range(2):
                centre = (start_pos[obj] + velocity[obj] * step) % torch.tensor([height, width])
                dist2 = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
                blob = torch.exp(-dist2 / 3.0)
                frame_features += 1.5 * blob.unsqueeze(-1) * objects[obj]
                frame_saliency += (1.0 + obj) * blob
            frame_saliency[peaks] += 0.5
            frame_features += noise * torch.randn(num_tokens, dim, generator=gen) / dim**0.5
            features[frame] = frame_features
            saliency[frame] = frame_saliency / frame_saliency.sum()
    timestamps = torch.arange(num_frames, dtype=torch.float32) / fps
    return SyntheticClip(
        features=features.to(device=device, dtype=dtype),
        saliency=saliency.to(device=device, dtype=dtype),
        timestamps=timestamps.to(device),
        grid=grid,
    )

"""Constant tables of ST-RoPE (spec section 3): frequencies, cos and sin, cached per setting.

The PyTorch forms (:mod:`tango_core.rope`) and the Triton kernels (:mod:`tango_core.kernels.rope`)
read the same cached tensors, so their angles agree bitwise. CUDA graphs read the tables at fixed
addresses: a graph holds the tables it reads (:func:`rope_angle_tables`, fetched and captured
under :data:`CAPTURE_LOCK`), so :func:`clear_rope_tables` never frees memory a live graph reads.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Tuple

import torch

CAPTURE_LOCK = threading.Lock()
"""Held while a graph that reads the tables takes them and is captured, and while they are cleared."""


def grid_positions(grid: Tuple[int, int], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each of the H*W tokens of a row-major grid: two (L,) float tensors."""
    height, width = grid
    flat = torch.arange(height * width, device=device)
    return (flat // width).float(), (flat % width).float()


def group_frequencies(sections: Tuple[int, int, int], base: float, group: int) -> torch.Tensor:
    """(D,) rotary frequencies of channel group ``group`` (zero on the other groups' channels)."""
    table = torch.zeros(sum(sections))
    start = sum(sections[:group])
    size = sections[group]
    if size:
        inv_freq = 1.0 / (base ** (torch.arange(0, size, 2, dtype=torch.int64).float() / size))
        table[start : start + size] = torch.cat((inv_freq, inv_freq))
    return table


@lru_cache(maxsize=None)
def time_half_frequencies(sections: Tuple[int, int, int], base_time: float, device: torch.device) -> torch.Tensor:
    """(D_t / 2,) rotary frequencies of the time group."""
    return group_frequencies(sections, base_time, 0)[: sections[0] // 2].to(device)


@lru_cache(maxsize=None)
def space_half_tables(
    grid: Tuple[int, int], sections: Tuple[int, int, int], base_space: float, group: int, scale: float, device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``scale`` times cos and sin (1, L, D_g / 2) of the row (group 1) or column (group 2) angles."""
    rows, cols = grid_positions(grid, torch.device("cpu"))
    start = sum(sections[:group])
    frequencies = group_frequencies(sections, base_space, group)[start : start + sections[group] // 2]
    angles = (rows if group == 1 else cols).view(-1, 1) * frequencies
    return (angles.cos() * scale).unsqueeze(0).to(device), (angles.sin() * scale).unsqueeze(0).to(device)


def rope_angle_tables(
    grid: Tuple[int, int], sections: Tuple[int, int, int], base_time: float, base_space: float, scale: float, device: torch.device
) -> tuple:
    """The cached tables the scaled rotation and the fused kernel read for one setting (hold them
    to keep their memory alive)."""
    return (
        time_half_frequencies(sections, base_time, device),
        space_half_tables(grid, sections, base_space, 1, scale, device),
        space_half_tables(grid, sections, base_space, 2, scale, device),
    )


@lru_cache(maxsize=32)
def time_tables(sections: Tuple[int, int, int], base_time: float, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Time frequencies (D,) and the rotate-half sign (D,): -1 on each group's first half."""
    sign = torch.ones(sum(sections))
    start = 0
    for size in sections:
        sign[start : start + size // 2] = -1.0
        start += size
    return group_frequencies(sections, base_time, 0).to(device), sign.to(device)


@lru_cache(maxsize=32)
def space_tables(
    grid: Tuple[int, int], sections: Tuple[int, int, int], base_space: float, device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin (L, D) of the row and column rotations of every grid position."""
    rows, cols = grid_positions(grid, torch.device("cpu"))
    row_angles = rows.view(-1, 1) * group_frequencies(sections, base_space, 1)
    col_angles = cols.view(-1, 1) * group_frequencies(sections, base_space, 2)
    _, sign = time_tables(sections, 1.0, torch.device("cpu"))
    cos = row_angles.cos() * col_angles.cos()
    signed_sin = (row_angles.sin() + col_angles.sin()) * sign
    return cos.to(device), signed_sin.to(device)


def clear_rope_tables() -> None:
    """Drop the cached tables (their memory is freed once nothing else holds them)."""
    with CAPTURE_LOCK:
        for cached in (time_half_frequencies, space_half_tables, time_tables, space_tables):
            cached.cache_clear()

"""Fused kernels of the statistics and ST-RoPE stages (spec section 3 and 4.1).

:func:`token_statistics` replaces :func:`tango_core.segmentation.token_statistics` (the float32
copy of the features into the extended table, their norms and consecutive-token similarities);
:func:`rope_split` replaces :func:`~tango_core.rope.rotate_unit_features_scaled` followed by
:func:`~tango_core.dpc.split_scaled_points`. Each reads every feature row once and writes each
output once.

Rounding follows the PyTorch CUDA forms: divisions and square roots are correctly rounded
(``div_rn`` / ``sqrt_rn``: Triton's ``/`` and ``sqrt`` are approximate on NVIDIA GPUs), and the
kernels are compiled without floating-point contraction so that every product is rounded on its
own, as in PyTorch's separate kernels; the one fused multiply-add of PyTorch's form (``addcmul``
with value 1) is an explicit ``tl.fma``. Only the order of the summations differs.
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ..rope_tables import space_half_tables, time_half_frequencies
from ..types import SPLIT_SCALE, SplitPoints
from . import MAX_STATISTICS_DIM


FRAMES_PER_PROGRAM = 16
"""Frames one statistics program walks; each program reads one extra row (the frame before its
first), so larger chunks read less twice but leave fewer programs for short clips."""

_STATISTICS_ELEMENTS = 4096  # channels x positions of one statistics program (small D: several positions)
_ROPE_TILE = 1024  # most channels of one half-group one rope program handles per step
_ROPE_ELEMENTS = 1024  # channels x rows of one rope tile (small D: several rows)
_NORM_EPS = tl.constexpr(1e-12)  # F.normalize's clamp of the norm (a constexpr: kernels read no other globals)


@triton.jit
def _token_statistics_kernel(
    features_ptr,
    extended_ptr,
    norms_ptr,
    similarity_ptr,
    num_frames,
    num_tokens,
    dim,
    FRAMES: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    positions = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    channels = tl.arange(0, BLOCK_D)
    position_ok = positions < num_tokens
    mask = position_ok[:, None] & (channels < dim)[None, :]
    first = tl.program_id(1) * FRAMES
    previous = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    # Step 0 reads the frame before the chunk again (without writing it) for the chunk's first pair.
    for step in range(FRAMES + 1):
        frame = first - 1 + step
        # Conditions on the frame as (BLOCK_L,) vectors: masks mixing scalars and blocks trip
        # newer versions of Triton's interpreter.
        frames = tl.zeros([BLOCK_L], dtype=tl.int32) + frame
        readable = (frames >= 0) & (frames < num_frames)
        owned = (frames >= first) & (frames < num_frames)
        rows = frame * num_tokens + positions
        offsets = rows.to(tl.int64)[:, None] * dim + channels[None, :]
        x = tl.load(features_ptr + offsets, mask=mask & readable[:, None], other=0.0).to(tl.float32)
        norm = tl.sqrt_rn(tl.sum(x * x, axis=1))
        unit = tl.div_rn(x, tl.maximum(norm, _NORM_EPS, propagate_nan=tl.PropagateNan.ALL)[:, None])
        tl.store(extended_ptr + offsets, x, mask=mask & owned[:, None])
        tl.store(norms_ptr + rows, norm, mask=position_ok & owned)
        similarity = tl.sum(previous * unit, axis=1)
        tl.store(similarity_ptr + (rows - num_tokens), similarity, mask=position_ok & owned & (frames > 0))
        previous = unit


def token_statistics(features: torch.Tensor, extended: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Float32 copy, norms and consecutive-token similarities of features, in one read.

    features: (N, L, D) float32, float16 or bfloat16 (D <= :data:`MAX_STATISTICS_DIM`);
    extended: (R, D) float32 contiguous, R >= N * L: its first N * L rows receive the features in
    float32 (the rest is left alone). Returns ``(norms, similarity)``: (N, L) float32 l2 norms and
    (N - 1, L) float32 ``cos(F[n, l], F[n + 1, l])`` of the unit features ``F / max(norm, 1e-12)``.
    """
    num_frames, num_tokens, dim = features.shape
    if dim > MAX_STATISTICS_DIM:
        raise ValueError(
            f"token_statistics supports feature dimensions up to {MAX_STATISTICS_DIM}, got {dim}; "
            "use the PyTorch statistics stage for wider features."
        )
    _check_extended(extended, num_frames * num_tokens, dim, features.device)
    features = features.contiguous()
    norms = torch.empty(num_frames, num_tokens, dtype=torch.float32, device=features.device)
    similarity = torch.empty(max(num_frames - 1, 0), num_tokens, dtype=torch.float32, device=features.device)
    if num_frames * num_tokens == 0 or dim == 0:
        return norms.zero_(), similarity.zero_()
    block_d = triton.next_power_of_2(dim)
    block_l = min(triton.next_power_of_2(num_tokens), max(1, _STATISTICS_ELEMENTS // block_d))
    frames_per_program = min(FRAMES_PER_PROGRAM, num_frames)
    grid = (triton.cdiv(num_tokens, block_l), triton.cdiv(num_frames, frames_per_program))
    _token_statistics_kernel[grid](
        features,
        extended,
        norms,
        similarity,
        num_frames,
        num_tokens,
        dim,
        FRAMES=frames_per_program,
        BLOCK_L=block_l,
        BLOCK_D=block_d,
        num_warps=max(1, min(16, block_l * block_d // 512)),
        enable_fp_fusion=False,
    )
    return norms, similarity


@triton.jit
def _rotate_group(
    squares,
    extended_ptr,
    high_ptr,
    low_ptr,
    row_offsets,
    divisor,
    row_ok,
    cos_ptr,
    sin_ptr,
    table_rows,
    group_start,
    HALF: tl.constexpr,
    TILE: tl.constexpr,
):
    """Rotate one channel group of a block of rows; returns ``squares`` plus the outputs' squares."""
    for tile_start in range(0, HALF, TILE):
        j = tile_start + tl.arange(0, TILE)
        mask = row_ok[:, None] & (j < HALF)[None, :]
        first_offsets = row_offsets[:, None] + (group_start + j)[None, :]
        table_offsets = table_rows[:, None] * HALF + j[None, :]
        cos = tl.load(cos_ptr + table_offsets, mask=mask, other=0.0)
        sin = tl.load(sin_ptr + table_offsets, mask=mask, other=0.0)
        first = tl.div_rn(tl.load(extended_ptr + first_offsets, mask=mask, other=0.0), divisor)
        second = tl.div_rn(tl.load(extended_ptr + first_offsets + HALF, mask=mask, other=0.0), divisor)
        # PyTorch: mul(first, cos).addcmul_(second, sin, value=-1) and mul(second, cos).addcmul_(first, sin).
        out_first = first * cos - second * sin
        out_second = tl.fma(first, sin, second * cos)
        high_first = out_first.to(tl.float16)
        high_second = out_second.to(tl.float16)
        tl.store(high_ptr + first_offsets, high_first, mask=mask)
        tl.store(high_ptr + first_offsets + HALF, high_second, mask=mask)
        tl.store(low_ptr + first_offsets, (out_first - high_first.to(tl.float32)).to(tl.float16), mask=mask)
        tl.store(low_ptr + first_offsets + HALF, (out_second - high_second.to(tl.float32)).to(tl.float16), mask=mask)
        squares += out_first * out_first + out_second * out_second
    return squares


@triton.jit
def _rope_split_kernel(
    extended_ptr,
    norms_ptr,
    time_cos_ptr,
    time_sin_ptr,
    height_cos_ptr,
    height_sin_ptr,
    width_cos_ptr,
    width_sin_ptr,
    high_ptr,
    low_ptr,
    squared_norms_ptr,
    num_rows,
    num_tokens,
    dim,
    norm_factor,
    HALF_TIME: tl.constexpr,
    HALF_HEIGHT: tl.constexpr,
    HALF_WIDTH: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    TILE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < num_rows
    row_offsets = rows.to(tl.int64) * dim
    norm = tl.load(norms_ptr + rows, mask=row_ok, other=1.0)
    divisor = tl.maximum(norm, _NORM_EPS, propagate_nan=tl.PropagateNan.ALL)[:, None]
    frames = rows // num_tokens
    positions = rows % num_tokens
    squares = tl.zeros([BLOCK_ROWS, TILE], dtype=tl.float32)
    squares = _rotate_group(
        squares, extended_ptr, high_ptr, low_ptr, row_offsets, divisor, row_ok,
        time_cos_ptr, time_sin_ptr, frames, 0, HALF_TIME, TILE,
    )
    squares = _rotate_group(
        squares, extended_ptr, high_ptr, low_ptr, row_offsets, divisor, row_ok,
        height_cos_ptr, height_sin_ptr, positions, 2 * HALF_TIME, HALF_HEIGHT, TILE,
    )
    squares = _rotate_group(
        squares, extended_ptr, high_ptr, low_ptr, row_offsets, divisor, row_ok,
        width_cos_ptr, width_sin_ptr, positions, 2 * (HALF_TIME + HALF_HEIGHT), HALF_WIDTH, TILE,
    )
    tl.store(squared_norms_ptr + rows, tl.sum(squares, axis=1) * norm_factor, mask=row_ok)


def rope_split(
    extended: torch.Tensor,
    norms: torch.Tensor,
    times: torch.Tensor,
    grid: Tuple[int, int],
    sections: Tuple[int, int, int],
    base_time: float,
    base_space: float,
) -> SplitPoints:
    """ST-RoPE of the unit features, scaled and split for tensor-core distances, in one pass.

    extended: (R, D) float32 whose first N * L rows are the features (frame-major tokens);
    norms: (N, L) float32 (:func:`token_statistics`); times: (N,) seconds; grid (H, W) with
    H * W = L; sections (d_t, d_h, d_w): even channel counts summing to D. Returns the
    :class:`~tango_core.types.SplitPoints` ((N * L, D) float16 high and low, (N * L,) float32
    squared norms) of ``rotate_unit_features_scaled(unit, ..., SPLIT_SCALE)`` with
    ``unit = features / max(norms, 1e-12)``.
    """
    num_frames, num_tokens = norms.shape
    num_rows = num_frames * num_tokens
    dim = extended.shape[-1]
    device = extended.device
    grid = (int(grid[0]), int(grid[1]))
    if grid[0] * grid[1] != num_tokens:
        raise ValueError(f"grid {grid} does not hold the {num_tokens} tokens of a frame.")
    if len(sections) != 3 or sum(sections) != dim or any(s < 0 or s % 2 for s in sections):
        raise ValueError(f"sections must be three non-negative even sizes summing to D = {dim}, got {sections!r}.")
    _check_extended(extended, num_rows, dim, device)
    sections = tuple(int(s) for s in sections)
    norms = norms.to(dtype=torch.float32).contiguous()
    high = torch.empty(num_rows, dim, dtype=torch.float16, device=device)
    low = torch.empty(num_rows, dim, dtype=torch.float16, device=device)
    squared_norms = torch.empty(num_rows, dtype=torch.float32, device=device)
    if num_rows == 0 or dim == 0:
        squared_norms.zero_()
        return SplitPoints(high, low, squared_norms)
    # The same float32 angle tables as rotate_unit_features_scaled, so the angles agree bitwise.
    time_angles = times.to(device=device, dtype=torch.float32).view(num_frames, 1) * time_half_frequencies(
        sections, base_time, device
    )
    time_cos = (time_angles.cos() * SPLIT_SCALE).contiguous()
    time_sin = (time_angles.sin() * SPLIT_SCALE).contiguous()
    height_cos, height_sin = space_half_tables(grid, sections, base_space, 1, SPLIT_SCALE, device)
    width_cos, width_sin = space_half_tables(grid, sections, base_space, 2, SPLIT_SCALE, device)
    halves = [size // 2 for size in sections]
    tile = min(triton.next_power_of_2(max(halves)), _ROPE_TILE)
    block_rows = min(triton.next_power_of_2(num_rows), max(1, _ROPE_ELEMENTS // tile))
    _rope_split_kernel[(triton.cdiv(num_rows, block_rows),)](
        extended,
        norms,
        time_cos,
        time_sin,
        height_cos,
        height_sin,
        width_cos,
        width_sin,
        high,
        low,
        squared_norms,
        num_rows,
        num_tokens,
        dim,
        1.0 / (SPLIT_SCALE * SPLIT_SCALE),
        HALF_TIME=halves[0],
        HALF_HEIGHT=halves[1],
        HALF_WIDTH=halves[2],
        BLOCK_ROWS=block_rows,
        TILE=tile,
        num_warps=4,
        enable_fp_fusion=False,
    )
    return SplitPoints(high, low, squared_norms)


def _check_extended(extended: torch.Tensor, rows: int, dim: int, device: torch.device) -> None:
    """Shape, dtype, layout and device of the extended table (metadata only: no synchronisation)."""
    if extended.dtype != torch.float32 or extended.dim() != 2 or not extended.is_contiguous():
        raise ValueError(f"extended must be a contiguous (R, D) float32 table, got {tuple(extended.shape)} {extended.dtype}.")
    if extended.shape[0] < rows or extended.shape[1] != dim:
        raise ValueError(f"extended {tuple(extended.shape)} has no room for the {rows} feature rows of width {dim}.")
    if extended.device != device:
        raise ValueError(f"extended is on {extended.device}, the features on {device}.")

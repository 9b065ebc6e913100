"""Fused kernels of batched DPC-KNN's (P, M, M) work (spec 4.6).

:func:`peak_distances_and_density` replaces the epilogue of
:func:`~tango_core.dpc.pairwise_distances` (after the two fp16 products) and the density part of
:func:`~tango_core.dpc.density_peak_scores`; :func:`peak_scores` replaces the rest of it, up to
the scores, which the caller ranks. One program handles one row ``(p, i)`` of one problem, the
whole row in one block, so the distance matrix is written once and read once more.

Rounding follows the PyTorch CUDA forms: ``sqrt_rn`` and libdevice's ``expf`` (Triton's ``sqrt``
and ``exp`` are approximate on NVIDIA GPUs; the interpreter has no libdevice and uses ``exp``),
and the kernels are compiled without floating-point contraction, so every square of the density
sum is rounded on its own as in PyTorch's separate kernels. Only the order of that sum differs:
here the squares are added one by one, nearest first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..types import SPLIT_SCALE, ProblemTables

MAX_WIDTH = 4096
"""Largest padded problem width M the kernels support (a whole row stays in registers)."""

_GRAM_SCALE = tl.constexpr(1.0 / (SPLIT_SCALE * SPLIT_SCALE))  # a power of two: the scaling is exact


@triton.jit(do_not_specialize=["width"])
def _distances_density_kernel(
    gram_ptr,
    cross_ptr,
    norms_ptr,
    valid_ptr,
    neg_inv_ptr,
    distances_ptr,
    density_ptr,
    row_max_ptr,
    width,
    NEAREST: tl.constexpr,
    BLOCK: tl.constexpr,
    PRECISE_EXP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # p * width + i
    problem = row // width
    i = row - problem * width
    cols = tl.arange(0, BLOCK)
    in_row = cols < width
    row_offsets = row * width + cols
    gram = tl.load(gram_ptr + row_offsets, mask=in_row, other=0.0)
    cross = tl.load(cross_ptr + row_offsets, mask=in_row, other=0.0)
    cross_t = tl.load(cross_ptr + (problem * width + cols) * width + i, mask=in_row, other=0.0)
    norms = tl.load(norms_ptr + problem * width + cols, mask=in_row, other=0.0)
    g = (gram + cross + cross_t) * _GRAM_SCALE
    squared = (tl.load(norms_ptr + row) + norms) - 2.0 * g
    distances = tl.sqrt_rn(tl.maximum(squared, 0.0))
    tl.store(distances_ptr + row_offsets, distances, mask=in_row)

    col_valid = tl.load(valid_ptr + problem * width + cols, mask=in_row, other=0) != 0
    row_valid = tl.load(valid_ptr + row) != 0
    # The NEAREST smallest of the row, one occurrence at a time; the first (self) is dropped.
    candidates = tl.where(col_valid, distances, float("inf"))
    nearest, at = tl.min(candidates, 0, return_indices=True, return_indices_tie_break_left=True)
    candidates = tl.where(cols == at, float("inf"), candidates)
    total = 0.0
    for _ in tl.static_range(1, NEAREST):
        nearest, at = tl.min(candidates, 0, return_indices=True, return_indices_tie_break_left=True)
        candidates = tl.where(cols == at, float("inf"), candidates)
        total += tl.where(nearest == float("inf"), 0.0, nearest * nearest)  # padding counts as 0
    exponent = total * tl.load(neg_inv_ptr + problem)
    if PRECISE_EXP:
        density = libdevice.exp(exponent)
    else:
        density = tl.exp(exponent)
    tl.store(density_ptr + row, tl.where(row_valid, density, float("-inf")))
    row_max = tl.max(tl.where(col_valid, distances, 0.0), 0)
    tl.store(row_max_ptr + row, tl.where(row_valid, row_max, 0.0))


@triton.jit(do_not_specialize=["width"])
def _scores_kernel(
    distances_ptr,
    density_ptr,
    row_max_ptr,
    valid_ptr,
    score_ptr,
    width,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # p * width + i
    problem = row // width
    cols = tl.arange(0, BLOCK)
    in_row = cols < width
    distances = tl.load(distances_ptr + row * width + cols, mask=in_row, other=0.0)
    density = tl.load(density_ptr + problem * width + cols, mask=in_row, other=float("-inf"))
    largest = tl.max(tl.load(row_max_ptr + problem * width + cols, mask=in_row, other=0.0), 0)
    own_density = tl.load(density_ptr + row)
    # Nearest strictly denser point, capped by the largest distance of the problem.
    delta = tl.min(tl.where(density > own_density, distances, largest), 0)
    row_valid = tl.load(valid_ptr + row) != 0
    score = tl.where(row_valid, own_density, 0.0) * delta  # no -inf * 0 on invalid rows
    tl.store(score_ptr + row, tl.where(row_valid, score, float("-inf")))


def _row_launch(width: int) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` of a one-row-per-program launch over rows of ``width`` columns."""
    if width > MAX_WIDTH:
        raise ValueError(
            f"the DPC kernels support problems of up to {MAX_WIDTH} points, got {width}; "
            "use the PyTorch path of tango_core.dpc for wider problems."
        )
    block = max(16, triton.next_power_of_2(width))
    return block, max(1, min(8, block // 256))


def _check_float(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tensor.dtype != torch.float32 or tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must be float32 of shape {shape}, got {tensor.dtype} {tuple(tensor.shape)}")


def peak_distances_and_density(
    gram: torch.Tensor,
    cross: torch.Tensor,
    squared_norms: torch.Tensor,
    valid: torch.Tensor,
    neg_inv_neighbours: torch.Tensor,
    num_neighbors: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distances, DPC-KNN densities and row maxima of P problems from their split Gram products.

    gram, cross: (P, M, M) float32, ``high @ high^T`` and ``high @ low^T`` of
    :class:`~tango_core.types.SplitPoints`; squared_norms: (P, M) float32; valid: (P, M) bool;
    neg_inv_neighbours: (P, 1) float32 (see :class:`~tango_core.types.ProblemTables`). M is at most
    :data:`MAX_WIDTH`. Returns ``(distances, density, row_max)``: (P, M, M) float32 distances as
    :func:`~tango_core.dpc.pairwise_distances` computes them, (P, M) float32 densities as
    :func:`~tango_core.dpc.density_peak_scores` defines them (-inf on invalid rows), and (P, M)
    float32 largest distance of each valid row to the valid columns (0 on invalid rows).
    """
    num_problems, width = squared_norms.shape
    block, num_warps = _row_launch(width)
    _check_float("gram", gram, (num_problems, width, width))
    _check_float("cross", cross, (num_problems, width, width))
    _check_float("squared_norms", squared_norms, (num_problems, width))
    _check_float("neg_inv_neighbours", neg_inv_neighbours, (num_problems, 1))
    if valid.dtype != torch.bool or tuple(valid.shape) != (num_problems, width):
        raise ValueError(f"valid must be bool of shape {(num_problems, width)}, got {valid.dtype} {tuple(valid.shape)}")
    device = gram.device
    distances = torch.empty(num_problems, width, width, dtype=torch.float32, device=device)
    density = torch.empty(num_problems, width, dtype=torch.float32, device=device)
    row_max = torch.empty(num_problems, width, dtype=torch.float32, device=device)
    if num_problems * width == 0:
        return distances, density, row_max
    _distances_density_kernel[(num_problems * width,)](
        gram.contiguous(),
        cross.contiguous(),
        squared_norms.contiguous(),
        valid.contiguous(),
        neg_inv_neighbours.contiguous(),
        distances,
        density,
        row_max,
        width,
        NEAREST=min(num_neighbors + 1, width),
        BLOCK=block,
        PRECISE_EXP=gram.is_cuda,  # CPU tensors only reach a kernel in Triton's interpreter
        num_warps=num_warps,
        enable_fp_fusion=False,
    )
    return distances, density, row_max


def peak_scores(
    distances: torch.Tensor, density: torch.Tensor, row_max: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """DPC-KNN scores ``density * delta`` of P problems (-inf on invalid rows).

    distances: (P, M, M) float32; density, row_max: (P, M) float32 from
    :func:`peak_distances_and_density`; valid: (P, M) bool. ``delta_i`` is the smallest distance
    to a valid point of strictly higher density, capped by the problem's largest distance (the
    largest itself when there is none), as in :func:`~tango_core.dpc.density_peak_scores`.
    Returns (P, M) float32.
    """
    num_problems, width = density.shape
    block, num_warps = _row_launch(width)
    _check_float("distances", distances, (num_problems, width, width))
    _check_float("row_max", row_max, (num_problems, width))
    if valid.dtype != torch.bool or tuple(valid.shape) != (num_problems, width):
        raise ValueError(f"valid must be bool of shape {(num_problems, width)}, got {valid.dtype} {tuple(valid.shape)}")
    score = torch.empty(num_problems, width, dtype=torch.float32, device=density.device)
    if num_problems * width == 0:
        return score
    _scores_kernel[(num_problems * width,)](
        distances.contiguous(),
        density.contiguous(),
        row_max.contiguous(),
        valid.contiguous(),
        score,
        width,
        BLOCK=block,
        num_warps=num_warps,
        enable_fp_fusion=False,
    )
    return score


def dpc_scores(
    gram: torch.Tensor,
    cross: torch.Tensor,
    squared_norms: torch.Tensor,
    tables: ProblemTables,
    num_neighbors: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and DPC-KNN scores of P problems: :func:`peak_distances_and_density`, then
    :func:`peak_scores`. Returns ``(distances, score)``: (P, M, M) and (P, M) float32; sorting the
    scores (descending, stable) gives :func:`~tango_core.dpc.dpc_knn_centres`' order.
    """
    distances, density, row_max = peak_distances_and_density(
        gram, cross, squared_norms, tables.valid, tables.neg_inv_neighbours, num_neighbors
    )
    return distances, peak_scores(distances, density, row_max, tables.valid)

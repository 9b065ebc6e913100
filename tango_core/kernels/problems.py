"""Fused kernel that expands the per-problem counts of a layout into its problem tables.

The host sends, per DPC-KNN problem, only its point count, centre count and (for context pools)
the offset of its first pool slot; :func:`problem_tables` writes the
:class:`~tango_core.types.ProblemTables` masks and weights, and the pool member slots, in one
launch (the PyTorch form, :func:`tango_core.dpc.problem_tables`, takes about a dozen).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..types import ProblemTables

_BLOCK = 512


@triton.jit(do_not_specialize=["counts_stride", "width", "most"])
def _problem_tables_kernel(
    counts_ptr,
    valid_ptr,
    invalid_ptr,
    centre_valid_ptr,
    centre_invalid_ptr,
    keep_all_ptr,
    neg_inv_ptr,
    members_ptr,
    counts_stride,
    width,
    most,
    num_neighbors,
    BLOCK: tl.constexpr,
    MEMBERS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    size = tl.load(counts_ptr + row * counts_stride)
    centres = tl.load(counts_ptr + row * counts_stride + 1)
    in_width = columns < width
    valid = columns < size
    tl.store(valid_ptr + row * width + columns, valid, mask=in_width)
    tl.store(invalid_ptr + row * width + columns, columns >= size, mask=in_width)
    in_most = columns < most
    tl.store(centre_valid_ptr + row * most + columns, columns < centres, mask=in_most)
    tl.store(centre_invalid_ptr + row * most + columns, columns >= centres, mask=in_most)
    if MEMBERS:
        offset = tl.load(counts_ptr + row * counts_stride + 2)
        tl.store(members_ptr + row * width + columns, offset + tl.minimum(columns, tl.maximum(size - 1, 0)), mask=in_width)
    if tl.program_id(1) == 0:
        tl.store(keep_all_ptr + row, size <= tl.maximum(centres, 1))
        used = tl.maximum(tl.minimum(size, num_neighbors + 1) - 1, 1)
        tl.store(neg_inv_ptr + row, tl.div_rn(-1.0, used.to(tl.float32)))


def problem_tables(
    counts: torch.Tensor, width: int, most: int, num_neighbors: int
) -> Tuple[ProblemTables, Optional[torch.Tensor]]:
    """counts: (P, 2) or (P, 3) int64 ``[points, centres(, first pool slot)]`` per problem
    (padding rows: zeros). Returns the :class:`ProblemTables` of width ``width`` and ``most``
    centres, and with three columns the (P, width) int64 pool slots of each problem's points
    (``offset + min(j, max(points - 1, 0))``; None with two columns)."""
    rows = counts.shape[0]
    device = counts.device
    valid = torch.empty(rows, width, dtype=torch.bool, device=device)
    invalid = torch.empty_like(valid)
    centre_valid = torch.empty(rows, most, dtype=torch.bool, device=device)
    centre_invalid = torch.empty_like(centre_valid)
    keep_all = torch.empty(rows, 1, dtype=torch.bool, device=device)
    neg_inv = torch.empty(rows, 1, dtype=torch.float32, device=device)
    with_members = counts.shape[1] >= 3
    members = torch.empty(rows, width, dtype=torch.int64, device=device) if with_members else None
    if rows:
        grid = (rows, max(triton.cdiv(max(width, most), _BLOCK), 1))
        _problem_tables_kernel[grid](
            counts,
            valid,
            invalid,
            centre_valid,
            centre_invalid,
            keep_all,
            neg_inv,
            members if with_members else valid,
            counts.stride(0),
            width,
            most,
            num_neighbors,
            BLOCK=_BLOCK,
            MEMBERS=with_members,
            num_warps=4,
        )
    return ProblemTables(valid, invalid, centre_valid, centre_invalid, neg_inv, keep_all), members

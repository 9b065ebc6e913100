"""Fused kernels of the clustering tails of salient selection and anchor merging (spec 4.4, 4.5).

:func:`nearest_centres` replaces :func:`~tango_core.dpc.assign_to_nearest`, :func:`best_members`
the membership argmax of :func:`~tango_core.dpc.best_members`, and :func:`merge_clusters` the
one-hot product, division and lerp of :func:`~tango_core.dpc.merge_clusters`. Nothing of size
(P, M, D) or (P, A, M) is materialised: the assignment gathers only the (point, centre)
distances, and the merge sorts each problem's points by slot (so that a slot's members lie
contiguously, in ascending point order) and gathers the members' feature rows straight from the
caller's feature table.

Launches: the assignment runs one program per (problem, block of points), walking the centres in
tiles with a running (min, argmin); the per-slot summaries (lowest member, points before the
slot, points in it) one program per (problem, block of slots), walking the points; the merge one
program per (problem, slot, block of channels), walking its members a few at a time.

Rounding: each cluster's sum is accumulated in float32, chunk by chunk of members in ascending
point order (a fixed order: deterministic, but not PyTorch's summation order); the division
and reciprocal are correctly rounded (``div_rn``: Triton's ``/`` is approximate on NVIDIA GPUs);
the merge kernel is compiled without floating-point contraction, and its lerp is written with the
one fused multiply-add that PyTorch's lerp kernels use (CUDA contracts it, the CPU kernel calls
``fmadd``). Triton's interpreter evaluates ``tl.fma`` unfused. Nothing here synchronises with the
host, so every function can be captured in a CUDA graph.
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

_NEAREST_ELEMENTS = 2048  # points x centres of one nearest-centre tile
_SUMMARY_ELEMENTS = 2048  # slots x points of one slot-summary tile
_MERGE_BLOCK_D = 512  # most channels of one merge program (D = 3584 is 7 blocks)
_MERGE_CHUNK = 8  # members one merge program loads together (summed as a tile, in a fixed order)


@triton.jit(
    do_not_specialize=[
        "width",
        "num_slots",
        "distances_stride_p",
        "distances_stride_m",
        "centres_stride_p",
        "valid_stride_p",
        "centre_valid_stride_p",
    ]
)
def _nearest_centres_kernel(
    distances_ptr,
    centres_ptr,
    valid_ptr,
    centre_valid_ptr,
    assignment_ptr,
    width,
    num_slots,
    distances_stride_p,
    distances_stride_m,
    distances_stride_c,
    centres_stride_p,
    centres_stride_a,
    valid_stride_p,
    valid_stride_m,
    centre_valid_stride_p,
    centre_valid_stride_a,
    BLOCK_M: tl.constexpr,
    BLOCK_A: tl.constexpr,
):
    problem = tl.program_id(0).to(tl.int64)
    points = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_row = points < width
    point_valid = tl.load(valid_ptr + problem * valid_stride_p + points * valid_stride_m, mask=in_row, other=0) != 0
    rows = distances_ptr + problem * distances_stride_p + points.to(tl.int64) * distances_stride_m
    best = tl.full([BLOCK_M], float("inf"), tl.float32)
    best_slot = tl.zeros([BLOCK_M], dtype=tl.int32)  # argmin of an all-inf row is 0, as in PyTorch
    own_slot = tl.zeros([BLOCK_M], dtype=tl.int32) + num_slots
    tile_start = 0
    # Runtime-bounded loops are while loops: Triton's interpreter cannot take a tensor bound in
    # range() under numpy >= 2.4 (on GPUs both compile to the same loop).
    while tile_start < num_slots:
        slots = tile_start + tl.arange(0, BLOCK_A)
        in_tile = slots < num_slots
        centre = tl.load(centres_ptr + problem * centres_stride_p + slots * centres_stride_a, mask=in_tile, other=0)
        centre_ok = tl.load(
            centre_valid_ptr + problem * centre_valid_stride_p + slots * centre_valid_stride_a, mask=in_tile, other=0
        )
        usable = in_tile & (centre_ok != 0) & (centre >= 0) & (centre < width)
        to_centre = tl.load(
            rows[:, None] + centre[None, :] * distances_stride_c,
            mask=in_row[:, None] & usable[None, :],
            other=float("inf"),
        )
        tile_best, tile_at = tl.min(to_centre, 1, return_indices=True, return_indices_tie_break_left=True)
        closer = tile_best < best  # strict: an earlier tile keeps its ties
        best_slot = tl.where(closer, tile_start + tile_at, best_slot)
        best = tl.where(closer, tile_best, best)
        is_own = usable[None, :] & (centre[None, :] == points[:, None])
        own_slot = tl.minimum(own_slot, tl.min(tl.where(is_own, slots[None, :], num_slots), 1))
        tile_start += BLOCK_A
    slot = tl.where(own_slot < num_slots, own_slot, best_slot)
    slot = tl.where(point_valid, slot, num_slots)
    tl.store(assignment_ptr + problem * width + points, slot.to(tl.int64), mask=in_row)


@triton.jit(do_not_specialize=["width", "num_slots"])
def _slot_summary_kernel(
    assignment_ptr,
    first_ptr,
    before_ptr,
    count_ptr,
    width,
    num_slots,
    BLOCK_S: tl.constexpr,
    BLOCK_M: tl.constexpr,
    FIRST: tl.constexpr,
    COUNTS: tl.constexpr,
):
    problem = tl.program_id(0).to(tl.int64)
    slots = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    in_slots = slots < num_slots
    first = tl.zeros([BLOCK_S], dtype=tl.int32) + width
    before = tl.zeros([BLOCK_S], dtype=tl.int32)
    count = tl.zeros([BLOCK_S], dtype=tl.int32)
    block_start = 0
    while block_start < width:
        points = block_start + tl.arange(0, BLOCK_M)
        # Points past the row read as the sentinel: neither in nor before any slot.
        slot_of = tl.load(assignment_ptr + problem * width + points, mask=points < width, other=num_slots)
        same = slot_of[None, :] == slots[:, None]
        if FIRST:
            first = tl.minimum(first, tl.min(tl.where(same, points[None, :], width), 1))
        if COUNTS:
            count += tl.sum(same.to(tl.int32), 1)
            before += tl.sum((slot_of[None, :] < slots[:, None]).to(tl.int32), 1)
        block_start += BLOCK_M
    outputs = problem * num_slots + slots
    if FIRST:
        tl.store(first_ptr + outputs, tl.where(first < width, first, 0).to(tl.int64), mask=in_slots)
    if COUNTS:
        tl.store(before_ptr + outputs, before, mask=in_slots)
        tl.store(count_ptr + outputs, count, mask=in_slots)


@triton.jit(
    do_not_specialize=[
        "width",
        "num_slots",
        "member_rows_stride_p",
        "anchors_stride_p",
        "centre_valid_stride_p",
    ]
)
def _merge_kernel(
    features_ptr,
    member_rows_ptr,
    order_ptr,
    anchors_ptr,
    centre_valid_ptr,
    before_ptr,
    count_ptr,
    merged_ptr,
    width,
    num_slots,
    dim,
    features_stride,
    member_rows_stride_p,
    member_rows_stride_m,
    anchors_stride_p,
    anchors_stride_a,
    centre_valid_stride_p,
    centre_valid_stride_a,
    beta,
    BLOCK_D: tl.constexpr,
    CHUNK: tl.constexpr,
):
    cluster = tl.program_id(0).to(tl.int64)  # p * num_slots + a
    problem = cluster // num_slots
    slot = cluster - problem * num_slots
    channels = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_dim = channels < dim
    slot_valid = tl.load(centre_valid_ptr + problem * centre_valid_stride_p + slot * centre_valid_stride_a) != 0
    count = tl.where(slot_valid, tl.load(count_ptr + cluster), 0)
    members = order_ptr + problem * width + tl.load(before_ptr + cluster)
    member_rows = member_rows_ptr + problem * member_rows_stride_p
    total = tl.zeros([BLOCK_D], dtype=tl.float32)
    offsets = tl.arange(0, CHUNK)
    chunk_start = 0
    while chunk_start < count:
        # CHUNK members' rows loaded as one (CHUNK, BLOCK_D) tile: many loads in flight at once.
        present = chunk_start + offsets < count
        points = tl.load(members + chunk_start + offsets, mask=present, other=0)
        rows = tl.load(member_rows + points * member_rows_stride_m, mask=present, other=0)
        x = tl.load(
            features_ptr + rows[:, None] * features_stride + channels[None, :],
            mask=present[:, None] & in_dim[None, :],
            other=0.0,
        )
        total += tl.sum(x, axis=0)
        chunk_start += CHUNK
    has_members = count > 0
    size = tl.maximum(count, 1).to(tl.float32)
    mean = tl.div_rn(total, size)
    anchor_point = tl.load(anchors_ptr + problem * anchors_stride_p + slot * anchors_stride_a, mask=has_members, other=0)
    anchor_row = tl.load(member_rows + anchor_point * member_rows_stride_m, mask=has_members, other=0)
    members_block = (tl.zeros([BLOCK_D], dtype=tl.int32) + count) > 0  # a block: see kernels.rope
    anchor = tl.load(features_ptr + anchor_row * features_stride + channels, mask=in_dim & members_block, other=0.0)
    weight = tl.maximum(tl.div_rn(1.0, size), beta)  # max(1 / n, beta)
    difference = anchor - mean
    # torch.lerp: start + w * (end - start) below 0.5, else end - (end - start) * (1 - w), each one
    # fused multiply-add; w - 1 is exact for w in [0.5, 1].
    small = tl.fma(difference, weight, mean)
    large = tl.fma(difference, weight - 1.0, anchor)
    merged = tl.where(has_members, tl.where(weight < 0.5, small, large), 0.0)
    tl.store(merged_ptr + cluster * dim + channels, merged, mask=in_dim)


def _check_table(name: str, tensor: torch.Tensor, dtype: torch.dtype, shape: Tuple[int, ...], device: torch.device) -> None:
    """Dtype, shape and device of one input (metadata only: no synchronisation)."""
    if tensor.dtype != dtype or tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must be {dtype} of shape {shape}, got {tensor.dtype} {tuple(tensor.shape)}.")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device}, expected {device}.")


def nearest_centres(
    distances: torch.Tensor, centres: torch.Tensor, valid: torch.Tensor, centre_valid: torch.Tensor
) -> torch.Tensor:
    """Slot of each point's nearest valid centre; a valid centre is assigned to itself.

    distances: (P, M, M) float32; centres: (P, A) int64 point indices; valid: (P, M) bool;
    centre_valid: (P, A) bool (any strides). Returns (P, M) int64: for a valid point m the lowest
    slot j minimising ``distances[p, m, centres[p, j]]`` over valid slots, or the lowest valid
    slot whose centre is m itself; ``A`` on invalid points. Equals
    :func:`~tango_core.dpc.assign_to_nearest` on valid points.
    """
    num_problems, width = valid.shape
    num_slots = centres.shape[1]
    device = distances.device
    _check_table("distances", distances, torch.float32, (num_problems, width, width), device)
    _check_table("centres", centres, torch.int64, (num_problems, num_slots), device)
    _check_table("valid", valid, torch.bool, (num_problems, width), device)
    _check_table("centre_valid", centre_valid, torch.bool, (num_problems, num_slots), device)
    assignment = torch.empty(num_problems, width, dtype=torch.int64, device=device)
    if num_problems * width == 0:
        return assignment
    if num_slots == 0:
        return assignment.zero_()  # every point carries the sentinel A = 0
    block_a = max(16, min(128, triton.next_power_of_2(num_slots)))
    block_m = max(16, min(triton.next_power_of_2(width), _NEAREST_ELEMENTS // block_a))
    _nearest_centres_kernel[(num_problems, triton.cdiv(width, block_m))](
        distances,
        centres,
        valid,
        centre_valid,
        assignment,
        width,
        num_slots,
        *distances.stride(),
        *centres.stride(),
        *valid.stride(),
        *centre_valid.stride(),
        BLOCK_M=block_m,
        BLOCK_A=block_a,
        num_warps=4,
    )
    return assignment


def _slot_summary(assignment: torch.Tensor, num_slots: int, first: bool, counts: bool) -> Tuple[torch.Tensor, ...]:
    """``(first, before, count)`` per slot of a (P, M) assignment, each (P, num_slots): the lowest
    point of the slot (int64, 0 if none), the number of points of lower slots and of the slot
    (int32). Only the requested ones are computed; the others are returned unwritten."""
    num_problems, width = assignment.shape
    device = assignment.device
    first_member = torch.empty(num_problems, num_slots, dtype=torch.int64, device=device)
    before = torch.empty(num_problems, num_slots, dtype=torch.int32, device=device)
    count = torch.empty(num_problems, num_slots, dtype=torch.int32, device=device)
    if num_problems * num_slots == 0:
        return first_member, before, count
    if width == 0:
        return first_member.zero_(), before.zero_(), count.zero_()
    block_s = max(16, min(64, triton.next_power_of_2(num_slots)))
    block_m = max(16, min(triton.next_power_of_2(width), _SUMMARY_ELEMENTS // block_s))
    _slot_summary_kernel[(num_problems, triton.cdiv(num_slots, block_s))](
        assignment.contiguous(),
        first_member,
        before,
        count,
        width,
        num_slots,
        BLOCK_S=block_s,
        BLOCK_M=block_m,
        FIRST=first,
        COUNTS=counts,
        num_warps=4,
    )
    return first_member, before, count


def best_members(assignment: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Lowest point of each slot. assignment: (P, M) int64 (:func:`nearest_centres`; invalid
    points carry a value outside ``[0, num_slots)``). Returns (P, num_slots) int64, 0 for a slot
    without points: the membership argmax of :func:`~tango_core.dpc.best_members`."""
    if assignment.dtype != torch.int64 or assignment.dim() != 2:
        raise ValueError(f"assignment must be a (P, M) int64 tensor, got {assignment.dtype} {tuple(assignment.shape)}.")
    if num_slots < 0:
        raise ValueError(f"num_slots must be non-negative, got {num_slots}.")
    return _slot_summary(assignment, int(num_slots), first=True, counts=False)[0]


def merge_clusters(
    features: torch.Tensor,
    member_rows: torch.Tensor,
    assignment: torch.Tensor,
    anchors: torch.Tensor,
    centre_valid: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Merged feature of every anchor: ``lerp(mean of its cluster, anchor, max(1 / n, beta))``.

    features: (R, D) float32 table with unit channel stride; member_rows: (P, M) int64 rows of
    ``features`` of the pool points; assignment: (P, M) int64 slots (:func:`nearest_centres`,
    ``A`` on invalid points); anchors: (P, A) int64 point indices of the slots' anchors (in
    ``[0, M)``); centre_valid: (P, A) bool. Returns (P, A, D) float32: for a valid slot of
    ``n >= 1`` points the merge of :func:`~tango_core.dpc.merge_clusters`, with the cluster sum
    accumulated in float32 in a fixed order; zeros on other slots.
    """
    num_problems, width = assignment.shape
    num_slots = anchors.shape[1]
    device = features.device
    if features.dtype != torch.float32 or features.dim() != 2:
        raise ValueError(f"features must be a (R, D) float32 table, got {features.dtype} {tuple(features.shape)}.")
    dim = features.shape[1]
    _check_table("member_rows", member_rows, torch.int64, (num_problems, width), device)
    _check_table("assignment", assignment, torch.int64, (num_problems, width), device)
    _check_table("anchors", anchors, torch.int64, (num_problems, num_slots), device)
    _check_table("centre_valid", centre_valid, torch.bool, (num_problems, num_slots), device)
    merged = torch.empty(num_problems, num_slots, dim, dtype=torch.float32, device=device)
    if num_problems * num_slots == 0 or dim == 0:
        return merged
    if features.stride(1) != 1:
        features = features.contiguous()
    assignment = assignment.contiguous()
    # Stable: a slot's members stay in ascending point order; invalid points (slot A) sort last.
    # Narrow keys make the radix sort shorter.
    keys = assignment.to(torch.int16 if num_slots < torch.iinfo(torch.int16).max else torch.int32)
    order = torch.sort(keys, dim=1, stable=True).indices
    _, before, count = _slot_summary(assignment, num_slots, first=False, counts=True)
    block_d = min(triton.next_power_of_2(dim), _MERGE_BLOCK_D)
    _merge_kernel[(num_problems * num_slots, triton.cdiv(dim, block_d))](
        features,
        member_rows,
        order,
        anchors,
        centre_valid,
        before,
        count,
        merged,
        width,
        num_slots,
        dim,
        features.stride(0),
        *member_rows.stride(),
        *anchors.stride(),
        *centre_valid.stride(),
        float(beta),
        BLOCK_D=block_d,
        CHUNK=_MERGE_CHUNK,
        num_warps=max(1, min(4, block_d // 128)),
        enable_fp_fusion=False,
    )
    return merged

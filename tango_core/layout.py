"""Host-side layout of the device work of one budget plan (spec 4.4-4.6).

A :class:`DeviceLayout` turns a :class:`~tango_core.budget.BudgetPlan` into padded index and mask
tables whose shapes alone fix every tensor shape of the device phase. Padding rows are inert:
they select nothing, merge nothing, and every output slot they produce carries the *sentinel*
token id, which sorts after all real ids and is cut off on the host, where the true output size
is known.

Padding to :func:`bucket_size` makes layouts of different videos share shapes, so that one CUDA
graph of the device phase serves many plans; :func:`exact_size` pads nothing.

The tables travel to the device as one byte buffer (:func:`pack`, :func:`unpack`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from .budget import BudgetPlan
from .dpc import problem_arrays

SizeFn = Callable[[int], int]
Spec = Tuple[Tuple[str, str, Tuple[int, ...]], ...]


def exact_size(n: int) -> int:
    """No padding."""
    return int(n)


def bucket_size(n: int) -> int:
    """Smallest of 0, 1, ..., 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ... >= n: four steps per
    doubling, so padding adds at most 25%."""
    n = int(n)
    if n <= 8:
        return n
    step = 1 << ((n - 1).bit_length() - 3)  # a quarter of the power of two below n
    return -(-n // step) * step


def power_of_two_size(n: int) -> int:
    """Smallest power of two >= n (0 stays 0)."""
    n = int(n)
    return 0 if n == 0 else 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class DeviceLayout:
    """Padded tables of one plan and the sizes that are not table shapes.

    arrays: name -> host array, in packing order. dims: sizes the device code needs besides
    the table shapes (``pool_slots``: padded count of context-pool tokens; ``merge_groups``).
    num_kept: true output size K (real ids sort first among the padded outputs).
    """

    arrays: Dict[str, np.ndarray]
    dims: Tuple[Tuple[str, int], ...]
    num_kept: int

    @cached_property
    def spec(self) -> Spec:
        return tuple((name, array.dtype.str, tuple(array.shape)) for name, array in self.arrays.items())

    @property
    def key(self) -> tuple:
        """Everything that fixes the shapes of the device work of this layout."""
        return (self.spec, self.dims)


def _padded(array: np.ndarray, rows: int, fill) -> np.ndarray:
    """``array`` with its first axis padded to ``rows`` by ``fill``."""
    out = np.full((rows,) + array.shape[1:], fill, dtype=array.dtype)
    out[: array.shape[0]] = array
    return out


def _concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concat(arange(s, s + n) for s, n in zip(starts, lengths))`` without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total)


def merge_groups(sizes: np.ndarray, size_fn: SizeFn, slack: float = 4.0, small: int = 1 << 22) -> List[np.ndarray]:
    """Group problems (by index into ``sizes``) into padded batches of width ``size_fn(max size)``.

    Problems are taken largest first, so a group's first member fixes its width; the next one
    joins while the group's padded distance matrices (``size_fn(count) * width**2``) stay within
    ``slack`` times their true size, or below ``small`` elements. Few groups mean few kernels;
    bounded padding keeps memory and work close to the unpadded problems.
    """
    size_list = np.asarray(sizes).tolist()
    order = sorted(range(len(size_list)), key=lambda index: -size_list[index])  # stable
    groups: List[List[int]] = []
    width = true_cost = 0.0
    for index in order:
        size = float(size_list[index])
        if groups:
            padded = size_fn(len(groups[-1]) + 1) * width * width
            if padded <= slack * (true_cost + size * size) or padded <= small:
                groups[-1].append(index)
                true_cost += size * size
                continue
        groups.append([index])
        width, true_cost = float(size_fn(int(size))), size * size
    return [np.asarray(sorted(group), dtype=np.int64) for group in groups]


def _tables(prefix: str, sizes: np.ndarray, centres: np.ndarray, num_neighbors: int, rows: int, width: int, most: int) -> dict:
    """DPC-KNN problem tables, padded to ``rows`` problems of ``width`` points and ``most`` centres."""
    arrays = problem_arrays(_padded(sizes, rows, 0), _padded(centres, rows, 0), num_neighbors, width, most)
    return {f"{prefix}.{name}": array for name, array in arrays.items()}


def build_layout(
    plan: BudgetPlan,
    num_frames: int,
    num_tokens: int,
    num_neighbors: int,
    size_fn: SizeFn = exact_size,
    merge_slack: float = 4.0,
    merge_small: int = 1 << 22,
    coarse_fn: SizeFn | None = None,
) -> DeviceLayout:
    """Tables of the device phase of ``plan`` for N = ``num_frames`` frames of L = ``num_tokens``.

    Token ids: the N real frames then one virtual frame per static segment form the *extended*
    frames; token l of extended frame e has id ``e * L + l``. Its output (and ST-RoPE) row is
    ``id + out_shift[e]`` (virtual frames land on their segment's first frame). The sentinel id
    ``E * L`` (E extended frames after padding) names a zero feature row and sorts last.
    Context pools are merged in groups formed by :func:`merge_groups` with ``merge_slack`` and
    ``merge_small``: loose grouping (few groups) suits eager launches, tight grouping (little
    padding) suits CUDA graphs, where the GPU work is what remains. ``coarse_fn`` (default:
    ``size_fn``) pads the sizes whose padding costs little (centre counts, unit rows, index lists),
    so that more layouts share a shape.
    """
    coarse_fn = size_fn if coarse_fn is None else coarse_fn
    L = num_tokens
    arrays: Dict[str, np.ndarray] = {}

    # Extended frames: virtual frame v averages its segment's frames.
    num_virtual = len(plan.virtual_segment)
    virtual_rows = size_fn(num_virtual)
    num_extended = num_frames + virtual_rows
    starts = plan.segment_start[plan.virtual_segment]
    lengths = plan.segment_length[plan.virtual_segment]
    frames = np.arange(num_frames)
    inside = (frames[None, :] >= starts[:, None]) & (frames[None, :] < (starts + lengths)[:, None])
    arrays["averaging"] = _padded((inside / lengths[:, None]).astype(np.float32), virtual_rows, 0.0)
    out_frame = np.concatenate((frames, starts)).astype(np.int64)
    out_shift = np.zeros(num_extended + 1, dtype=np.int64)  # last entry: the sentinel's frame
    out_shift[: len(out_frame)] = (out_frame - np.arange(len(out_frame))) * L
    arrays["out_shift"] = out_shift

    num_units = len(plan.unit_frame)
    unit_rows = coarse_fn(num_units)  # plus one spare row that nothing selects or pools
    arrays["unit_positions"] = _padded(plan.unit_positions, unit_rows + 1, False)

    # Salient selection: one batch of the units with k' > 0, candidates in saliency order.
    salient_units = np.flatnonzero(plan.unit_salient > 0)
    if len(salient_units):
        rows = size_fn(len(salient_units))
        candidates, picks = plan.unit_candidates[salient_units], plan.unit_salient[salient_units]
        width = min(size_fn(int(candidates.max())), L)
        most = min(coarse_fn(int(picks.max())), width)  # picks <= candidates
        frame = plan.unit_frame[salient_units]
        arrays.update(_tables("salient", candidates, picks, num_neighbors, rows, width, most))
        arrays["salient.unit"] = _padded(salient_units, rows, unit_rows)
        arrays["salient.frame"] = _padded(frame, rows, 0)
        arrays["salient.first_id"] = _padded(frame[:, None] * L, rows, 0)
        arrays["salient.rope_row"] = _padded(out_frame[frame][:, None] * L, rows, 0)
        arrays["salient.excluded"] = _padded(~plan.unit_positions[salient_units], rows, True)

    # Context pools, laid end to end in unit order (the units of a pool are contiguous); at
    # least one padding slot follows them, so that padding can point at a sentinel slot.
    total_pool = int(plan.pool_size.sum())
    dims = [("pool_slots", 0), ("merge_groups", 0)]
    if total_pool:
        pool_slots = coarse_fn(total_pool + 1)
        pool_shift = np.zeros(unit_rows + 1, dtype=np.int64)
        pool_shift[:num_units] = (plan.unit_frame - np.arange(num_units)) * L
        pool_shift[unit_rows] = (num_extended - unit_rows) * L  # the spare row's tokens are sentinels
        arrays["pool_shift"] = pool_shift
        pool_offset = np.cumsum(plan.pool_size) - plan.pool_size
        whole = np.flatnonzero((plan.pool_budget >= plan.pool_size) & (plan.pool_size > 0))
        whole_slots = _concatenated_ranges(pool_offset[whole], plan.pool_size[whole])
        if len(whole_slots):
            arrays["whole"] = _padded(whole_slots, coarse_fn(len(whole_slots)), pool_slots - 1)
        merged = np.flatnonzero((plan.pool_budget > 0) & (plan.pool_budget < plan.pool_size))
        groups = merge_groups(plan.pool_size[merged], size_fn, merge_slack, merge_small)
        for g, group in enumerate(groups):
            pools = merged[group]
            sizes, anchors = plan.pool_size[pools], plan.pool_budget[pools]
            rows, width = size_fn(len(pools)), size_fn(int(sizes.max()))
            most = min(coarse_fn(int(anchors.max())), width)  # anchors < sizes
            members = pool_offset[pools][:, None] + np.minimum(np.arange(width)[None, :], sizes[:, None] - 1)
            arrays.update(_tables(f"merge{g}", sizes, anchors, num_neighbors, rows, width, most))
            arrays[f"merge{g}.members"] = _padded(members, rows, 0)
        dims = [("pool_slots", pool_slots), ("merge_groups", len(groups))]
    return DeviceLayout(arrays=arrays, dims=tuple(dims), num_kept=plan.num_kept)


@lru_cache(maxsize=256)
def _offsets(spec: Spec) -> Tuple[Tuple[int, ...], int]:
    """Byte offset of each table (8-byte aligned) and the buffer size."""
    offsets, total = [], 0
    for _, dtype, shape in spec:
        offsets.append(total)
        total += -(-np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64)) // 8) * 8
    return tuple(offsets), max(total, 8)


def packed_size(spec: Spec) -> int:
    """Bytes of the buffer that holds the tables of ``spec``."""
    return _offsets(spec)[1]


def pack(arrays: Dict[str, np.ndarray], out: np.ndarray, spec: Spec | None = None) -> None:
    """Write the tables into ``out`` (uint8, at least :func:`packed_size` bytes); ``spec``: theirs,
    if already known."""
    if spec is None:
        spec = tuple((name, array.dtype.str, tuple(array.shape)) for name, array in arrays.items())
    offsets, _ = _offsets(spec)
    for array, offset in zip(arrays.values(), offsets):
        out[offset : offset + array.nbytes] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def unpack(buffer: torch.Tensor, spec: Spec) -> Dict[str, torch.Tensor]:
    """Typed views of the tables inside ``buffer`` (uint8 tensor written by :func:`pack`)."""
    offsets, _ = _offsets(spec)
    views = {}
    for (name, dtype, shape), offset in zip(spec, offsets):
        torch_dtype = torch.bool if np.dtype(dtype) == np.bool_ else torch.from_numpy(np.zeros(0, dtype)).dtype
        nbytes = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
        views[name] = buffer[offset : offset + nbytes].view(torch_dtype).view(shape)
    return views

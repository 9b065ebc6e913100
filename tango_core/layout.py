"""Host-side layout of the device work of one budget plan (spec 4.4-4.6).

A :class:`DeviceLayout` turns a :class:`~tango_core.budget.BudgetPlan` into padded index and mask
tables whose shapes alone fix every tensor shape of the device phase. Padding rows are inert:
they select nothing, merge nothing, and every output slot they produce carries the *sentinel*
token id, which sorts after all real ids and is cut off on the host, where the true output size
is known.

Padding to :func:`bucket_size` makes layouts of different videos share shapes, so that one CUDA
graph of the device phase serves many plans; :func:`exact_size` pads nothing. A
:class:`LayoutPolicy` says how an executor pads and groups.

The tables travel to the device as one byte buffer (:attr:`DeviceLayout.packed`, :func:`unpack`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .budget import BudgetPlan

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
    """Padded tables of one plan, packed in one byte buffer, and the sizes that are not table shapes.

    spec: (name, dtype, shape) of each table, in packing order. packed: the uint8 buffer holding
    them (each 16-byte aligned, :func:`packed_size` bytes). dims: sizes the device code needs
    besides the table shapes (``pool_slots``: padded count of context-pool tokens;
    ``merge_groups``). num_kept: true output size K (real ids sort first among the padded outputs).
    """

    spec: Spec
    packed: np.ndarray
    dims: Tuple[Tuple[str, int], ...]
    num_kept: int

    @property
    def key(self) -> tuple:
        """Everything that fixes the shapes of the device work of this layout."""
        return (self.spec, self.dims)


class _TableWriter:
    """Collects tables as (name, dtype, shape, fill) and writes them straight into one packed
    buffer: no padded copies, no second copy into the buffer."""

    def __init__(self) -> None:
        self.entries: List[Tuple[str, np.dtype, Tuple[int, ...], Callable[[np.ndarray], None]]] = []

    def add(self, name: str, dtype, shape: Tuple[int, ...], fill: Callable[[np.ndarray], None]) -> None:
        """``fill(view)`` writes the whole (``shape``, ``dtype``) table into ``view``."""
        self.entries.append((name, np.dtype(dtype), tuple(int(n) for n in shape), fill))

    def padded(self, name: str, array: np.ndarray, rows: int, fill_value) -> None:
        """``array`` with its first axis padded to ``rows`` by ``fill_value``."""

        def write(view: np.ndarray) -> None:
            view[: len(array)] = array
            view[len(array) :] = fill_value

        self.add(name, array.dtype, (rows,) + array.shape[1:], write)

    def counts(self, prefix: str, columns: Tuple[np.ndarray, ...], rows: int) -> None:
        """``{prefix}.counts``: (rows, len(columns)) int64 per-problem counts, padding rows zero."""
        count = len(columns[0])

        def write(view: np.ndarray) -> None:
            for index, column in enumerate(columns):
                view[:count, index] = column
            view[count:] = 0

        self.add(f"{prefix}.counts", np.int64, (rows, len(columns)), write)

    def build(self) -> Tuple[Spec, np.ndarray]:
        spec = tuple((name, dtype.str, shape) for name, dtype, shape, _ in self.entries)
        offsets, total = _offsets(spec)
        packed = np.empty(total, dtype=np.uint8)
        for (_, dtype, shape, fill), offset in zip(self.entries, offsets):
            fill(packed[offset : offset + dtype.itemsize * math.prod(shape)].view(dtype).reshape(shape))
        return spec, packed


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


@dataclass(frozen=True)
class LayoutPolicy:
    """How :func:`build_layout` pads and groups a plan's tables.

    size_fn pads table sizes (:func:`exact_size`: no padding; :func:`bucket_size`: shared shapes);
    coarse_fn (default: ``size_fn``) pads the sizes whose padding costs little (centre counts,
    unit rows, index lists), so that more layouts share a shape; merge_slack and merge_small
    group context pools (:func:`merge_groups`): loose grouping (few groups) suits eager launches,
    tight grouping (little padding) suits CUDA graphs, where the GPU work is what remains.
    """

    size_fn: SizeFn = exact_size
    merge_slack: float = 4.0
    merge_small: int = 1 << 22
    coarse_fn: Optional[SizeFn] = None


EXACT_LAYOUT = LayoutPolicy()


def build_layout(plan: BudgetPlan, num_frames: int, num_tokens: int, policy: LayoutPolicy = EXACT_LAYOUT) -> DeviceLayout:
    """Tables of the device phase of ``plan`` for N = ``num_frames`` frames of L = ``num_tokens``.

    Token ids: the N real frames then one virtual frame per static segment form the *extended*
    frames; token l of extended frame e has id ``e * L + l``. Its output (and ST-RoPE) row is
    ``id + out_shift[e]`` (virtual frames land on their segment's first frame). The sentinel id
    ``E * L`` (E extended frames after padding) names a zero feature row and sorts last.
    ``policy`` pads and groups (:class:`LayoutPolicy`).
    """
    size_fn = policy.size_fn
    coarse_fn = size_fn if policy.coarse_fn is None else policy.coarse_fn
    L = num_tokens
    tables = _TableWriter()
    dims: List[Tuple[str, int]] = []  # widths and centre counts of the DPC-KNN problem groups

    # Extended frames: virtual frame v averages its segment's frames.
    num_virtual = len(plan.virtual_segment)
    virtual_rows = size_fn(num_virtual)
    num_extended = num_frames + virtual_rows
    starts = plan.segment_start[plan.virtual_segment]
    lengths = plan.segment_length[plan.virtual_segment]

    def averaging(view: np.ndarray) -> None:
        frames = np.arange(num_frames)
        inside = (frames >= starts[:, None]) & (frames < (starts + lengths)[:, None])
        np.divide(inside, lengths[:, None], out=view[:num_virtual], casting="unsafe")
        view[num_virtual:] = 0.0

    tables.add("averaging", np.float32, (virtual_rows, num_frames), averaging)
    out_frame = np.concatenate((np.arange(num_frames), starts))
    out_shift = np.zeros(num_extended + 1, dtype=np.int64)  # last entry: the sentinel's frame
    out_shift[: len(out_frame)] = (out_frame - np.arange(len(out_frame))) * L
    tables.add("out_shift", np.int64, out_shift.shape, lambda view: np.copyto(view, out_shift))

    num_units = len(plan.unit_frame)
    unit_rows = coarse_fn(num_units)  # plus one spare row that nothing selects or pools
    tables.padded("unit_positions", plan.unit_positions, unit_rows + 1, False)

    # Salient selection: one batch of the units with k' > 0, candidates in saliency order.
    salient_units = np.flatnonzero(plan.unit_salient)
    if len(salient_units):
        rows = size_fn(len(salient_units))
        candidates, picks = plan.unit_candidates[salient_units], plan.unit_salient[salient_units]
        width = min(size_fn(int(candidates.max())), L)
        most = min(coarse_fn(int(picks.max())), width)  # picks <= candidates
        frame = plan.unit_frame[salient_units]
        # Per problem: unit, frame, first token id, first ST-RoPE row, candidates, picks.
        # Padding rows: the spare unit (no positions), no candidates.
        indices = np.stack((salient_units, frame, frame * L, out_frame[frame] * L, candidates, picks), axis=1)
        tables.padded("salient.indices", indices, rows, np.array([unit_rows, 0, 0, 0, 0, 0]))
        dims += [("salient.width", width), ("salient.most", most)]

    # Context pools, laid end to end in unit order (the units of a pool are contiguous); at
    # least one padding slot follows them, so that padding can point at a sentinel slot.
    pool_size, pool_budget = plan.pool_size, plan.pool_budget
    total_pool = int(pool_size.sum())
    pool_dims = [("pool_slots", 0), ("merge_groups", 0)]
    if total_pool:
        pool_slots = coarse_fn(total_pool + 1)
        pool_shift = np.empty(unit_rows + 1, dtype=np.int64)
        pool_shift[:num_units] = (plan.unit_frame - np.arange(num_units)) * L
        pool_shift[num_units:unit_rows] = 0
        pool_shift[unit_rows] = (num_extended - unit_rows) * L  # the spare row's tokens are sentinels
        tables.add("pool_shift", np.int64, pool_shift.shape, lambda view: np.copyto(view, pool_shift))
        pool_offset = np.cumsum(pool_size) - pool_size
        whole = np.flatnonzero((pool_budget >= pool_size) & (pool_size > 0))
        if len(whole):
            whole_slots = _concatenated_ranges(pool_offset[whole], pool_size[whole])
            tables.padded("whole", whole_slots, coarse_fn(len(whole_slots)), pool_slots - 1)
        merged = np.flatnonzero((pool_budget > 0) & (pool_budget < pool_size))
        groups = merge_groups(pool_size[merged], size_fn, policy.merge_slack, policy.merge_small)
        for g, group in enumerate(groups):
            pools = merged[group]
            sizes, anchors = pool_size[pools], pool_budget[pools]
            rows, width = size_fn(len(pools)), size_fn(int(sizes.max()))
            most = min(coarse_fn(int(anchors.max())), width)  # anchors < sizes
            tables.counts(f"merge{g}", (sizes, anchors, pool_offset[pools]), rows)
            dims += [(f"merge{g}.width", width), (f"merge{g}.most", most)]
        pool_dims = [("pool_slots", pool_slots), ("merge_groups", len(groups))]
    spec, packed = tables.build()
    return DeviceLayout(spec=spec, packed=packed, dims=tuple(pool_dims + dims), num_kept=plan.num_kept)


@lru_cache(maxsize=256)
def _offsets(spec: Spec) -> Tuple[Tuple[int, ...], int]:
    """Byte offset of each table and the buffer size. Tables start 16-byte aligned, as fresh
    allocations do: Triton compiles per pointer alignment, so a table's alignment must not depend
    on the sizes of the tables before it."""
    offsets, total = [], 0
    for _, dtype, shape in spec:
        offsets.append(total)
        total += -(-np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64)) // 16) * 16
    return tuple(offsets), max(total, 16)


def packed_size(spec: Spec) -> int:
    """Bytes of the buffer that holds the tables of ``spec``."""
    return _offsets(spec)[1]


def unpack(buffer: torch.Tensor, spec: Spec) -> Dict[str, torch.Tensor]:
    """Typed views of the tables of ``spec`` inside ``buffer``, a uint8 tensor holding
    :attr:`DeviceLayout.packed`."""
    offsets, _ = _offsets(spec)
    views = {}
    for (name, dtype, shape), offset in zip(spec, offsets):
        torch_dtype = torch.bool if np.dtype(dtype) == np.bool_ else torch.from_numpy(np.zeros(0, dtype)).dtype
        nbytes = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
        views[name] = buffer[offset : offset + nbytes].view(torch_dtype).view(shape)
    return views

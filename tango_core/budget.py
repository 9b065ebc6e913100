"""Host-side budget plan of the pipeline (spec 4.2, 4.3, section 8).

Everything here is exact integer / float64 arithmetic on a handful of numbers per segment; the
plan fixes every output size in advance so the device work needs no further synchronisation.

Vocabulary. A *unit* is a set of positions of one (possibly virtual) frame on which salient
selection runs: a single-frame segment, the static pseudo-frame of a segment (a virtual frame
holding the segment's averaged features), or the dynamic positions of one frame of a
multi-frame segment. A *pool* is what context merging runs on: the unselected tokens of one
unit, or of all dynamic units of a segment together. Units of one pool are contiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import numpy as np

from .config import TangoConfig


@dataclass
class BudgetPlan:
    """Sizes of every unit and pool.

    unit_frame: (U,) extended frame of each unit (< N: real frame; N + v: virtual frame v).
    unit_positions: (U, L) bool positions of the unit. unit_candidates: (U,) salient candidates
    ``m``; unit_salient: (U,) salient picks ``k'``. unit_pool: (U,) pool of each unit.
    pool_size / pool_budget: (J,) context pool size and anchors (0: drop all; >= size: keep all).
    virtual_segment: (V,) segment of each virtual frame. segment_start / segment_length: (G,).
    """

    unit_frame: np.ndarray
    unit_positions: np.ndarray
    unit_candidates: np.ndarray
    unit_salient: np.ndarray
    unit_pool: np.ndarray
    pool_size: np.ndarray
    pool_budget: np.ndarray
    virtual_segment: np.ndarray
    segment_start: np.ndarray
    segment_length: np.ndarray

    @property
    def pool_kept(self) -> np.ndarray:
        """(J,) tokens each pool contributes to the output."""
        return np.minimum(self.pool_budget, self.pool_size)

    @property
    def num_kept(self) -> int:
        return int(self.unit_salient.sum() + self.pool_kept.sum())


def _salient_split(budget: int, size: int, config: TangoConfig) -> tuple[int, int, int]:
    """(k, m, k') for a unit of ``size`` tokens and per-frame budget ``budget``."""
    salient = int(budget * (1 - config.context_ratio))
    candidates = min(int(config.alpha * salient), size) if salient > 0 else 0
    return salient, candidates, min(salient, candidates)


def build_plan(static: np.ndarray, segment_lengths: List[int], config: TangoConfig) -> BudgetPlan:
    """Budget plan of the reference (spec 4.2-4.3), then the exact-budget correction if asked.

    static: (G, L) bool static positions of each segment (all False for single frames).
    """
    plan = _reference_plan(static, segment_lengths, config)
    if not config.exact_budget:
        return plan
    num_frames = int(sum(segment_lengths))
    target = max(1, int(round(config.retention_ratio * num_frames * static.shape[1])))
    static = static.copy()
    capacity = _capacity(static, segment_lengths)
    # Static collapse can leave fewer distinct tokens than asked for: undo it where it gains most.
    if capacity < target:
        gain = static.sum(1) * (np.asarray(segment_lengths) - 1)
        for segment in np.argsort(-gain, kind="stable"):
            if capacity >= target:
                break
            capacity += int(gain[segment])
            static[segment] = False
        plan = _reference_plan(static, segment_lengths, config)
    _spend_exactly(plan, target)
    return plan


def _capacity(static: np.ndarray, segment_lengths: List[int]) -> int:
    num_positions = static.shape[1]
    num_static = static.sum(1)
    return int(sum(s + n * (num_positions - s) for s, n in zip(num_static, segment_lengths)))


def _reference_plan(static: np.ndarray, segment_lengths: List[int], config: TangoConfig) -> BudgetPlan:
    num_positions = static.shape[1]
    num_segments = len(segment_lengths)
    ratio = config.retention_ratio
    num_frames = int(sum(segment_lengths))
    static_counts = static.sum(axis=1).tolist()
    # Position masks of the units, by row: 0 all positions, 1 + g static of segment g, 1 + G + g dynamic.
    unit_mask: List[int] = []
    unit_frame: List[int] = []
    unit_candidates: List[int] = []
    unit_salient: List[int] = []
    unit_pool: List[int] = []
    pool_size: List[int] = []
    pool_budget: List[int] = []
    virtual_segment: List[int] = []

    def add_compressed_frame(frame: int, mask: int, size: int, q: float) -> None:
        budget = max(1, math.ceil(size * q))
        salient, candidates, picks = _salient_split(budget, size, config)
        unit_mask.append(mask)
        unit_frame.append(frame)
        unit_candidates.append(candidates)
        unit_salient.append(picks)
        unit_pool.append(len(pool_size))
        pool_size.append(size - picks)
        pool_budget.append(budget - salient)

    start = 0
    for segment, length in enumerate(segment_lengths):
        if length == 1:
            add_compressed_frame(start, 0, num_positions, ratio)
            start += length
            continue
        num_static = static_counts[segment]
        num_dynamic = num_positions - num_static
        total = length * num_positions
        raised = min(ratio / ((total - (length - 1) * num_static) / total), 1.0)
        if num_static > 0:
            virtual_segment.append(segment)
            add_compressed_frame(num_frames + len(virtual_segment) - 1, 1 + segment, num_static, raised)
        if num_dynamic > 0:
            budget = math.ceil(num_dynamic * raised)
            salient, candidates, picks = _salient_split(budget, num_dynamic, config)
            unit_mask += [1 + num_segments + segment] * length
            unit_frame += range(start, start + length)
            unit_candidates += [candidates] * length
            unit_salient += [picks] * length
            unit_pool += [len(pool_size)] * length
            pool_size.append(length * (num_dynamic - picks))
            pool_budget.append((budget - salient) * length)
        start += length

    masks = np.concatenate((np.ones((1, num_positions), dtype=bool), static, ~static))
    lengths = np.asarray(segment_lengths, dtype=np.int64)
    return BudgetPlan(
        unit_frame=np.asarray(unit_frame, dtype=np.int64),
        unit_positions=masks[np.asarray(unit_mask, dtype=np.int64)],
        unit_candidates=np.asarray(unit_candidates, dtype=np.int64),
        unit_salient=np.asarray(unit_salient, dtype=np.int64),
        unit_pool=np.asarray(unit_pool, dtype=np.int64),
        pool_size=np.asarray(pool_size, dtype=np.int64),
        pool_budget=np.asarray(pool_budget, dtype=np.int64),
        virtual_segment=np.asarray(virtual_segment, dtype=np.int64),
        segment_start=np.cumsum(lengths) - lengths,
        segment_length=lengths,
    )


def _share(amount: int, weights: np.ndarray) -> np.ndarray:
    """Split ``amount`` (<= weights.sum()) in proportion to integer ``weights``, never above them.

    Largest remainders get the leftover units; ties go to the lower index.
    """
    total = int(weights.sum())
    if amount <= 0 or total == 0:
        return np.zeros_like(weights)
    exact = weights.astype(np.float64) * amount / total
    shares = np.minimum(np.floor(exact).astype(np.int64), weights)
    leftover = amount - int(shares.sum())
    room = weights - shares
    order = np.lexsort((np.arange(len(weights)), -(exact - np.floor(exact))))
    order = order[room[order] > 0]
    shares[order[:leftover]] += 1
    return shares


def _spend_exactly(plan: BudgetPlan, target: int) -> None:
    """Move context (then salient) budget so that the plan keeps exactly ``target`` tokens."""
    kept = plan.pool_kept.copy()
    difference = target - plan.num_kept
    if difference > 0:
        kept += _share(difference, plan.pool_size - kept)
    elif difference < 0:
        removed_context = min(-difference, int(kept.sum()))
        kept -= _share(removed_context, kept)
        removed_salient = -difference - removed_context
        if removed_salient > 0:
            salient = plan.unit_salient
            plan.unit_salient = salient - _share(removed_salient, salient)
            # Fewer salient picks leave more tokens in the pools (whose budgets stay as set).
            freed = np.bincount(plan.unit_pool, weights=salient - plan.unit_salient, minlength=len(kept))
            plan.pool_size = plan.pool_size + freed.astype(np.int64)
    plan.pool_budget = kept

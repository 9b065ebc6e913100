"""Fused kernel of the segmentation statistics (spec 4.1, 4.2).

:func:`run_statistics` replaces :func:`tango_core.segmentation.run_statistics`: the two
:func:`~tango_core.segmentation.run_lengths_on_device` passes (static threshold and segmentation
threshold) and the histogram of :func:`~tango_core.segmentation.run_length_counts`. One program
per block of token positions walks the frame pairs backwards, keeping both run lengths in
registers. Counts are integers (atomic integer additions are exact), so the results are
bit-identical to the PyTorch forms.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

_BLOCK = 128  # token positions per program


@triton.jit
def _run_statistics_kernel(
    similarity_ptr,
    static_runs_ptr,
    histogram_ptr,
    num_pairs,
    num_tokens,
    static_threshold,
    threshold,
    PAIRS_BOUND: tl.constexpr,  # a power of two >= num_pairs: few compiles, a compile-time loop bound
    BLOCK: tl.constexpr,
    HISTOGRAM: tl.constexpr,
):
    positions = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = positions < num_tokens
    static_run = tl.zeros([BLOCK], dtype=tl.int32)
    run = tl.zeros([BLOCK], dtype=tl.int32)
    for step in range(PAIRS_BOUND):
        pair = num_pairs - 1 - step
        active = ok & (tl.zeros([BLOCK], dtype=tl.int32) + pair >= 0)  # a block: see kernels.rope
        offsets = pair * num_tokens + positions
        similarity = tl.load(similarity_ptr + offsets, mask=active, other=0.0)
        static_run = tl.where(similarity > static_threshold, static_run + 1, 0)
        tl.store(static_runs_ptr + offsets, static_run.to(tl.float32), mask=active)
        if HISTOGRAM:
            run = tl.where(similarity > threshold, run + 1, 0)
            tl.atomic_add(histogram_ptr + pair * (num_pairs + 1) + run, 1, mask=active, sem="relaxed")


def run_statistics(
    similarity: torch.Tensor, static_threshold: float, threshold: Optional[float]
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Static run lengths and HoliTom window counts of consecutive-token similarities.

    similarity: (N-1, L) float32. Returns ``(static_runs, at_least)``: (N-1, L) float32 run
    lengths of ``similarity > static_threshold`` (:func:`~tango_core.segmentation.run_lengths_on_device`,
    as floats: exact) and, when ``threshold`` is not None, the (N-1, N-1) int64 counts of
    :func:`~tango_core.segmentation.run_length_counts` of the runs of ``similarity > threshold``
    (else None).
    """
    num_pairs, num_tokens = similarity.shape
    similarity = similarity.contiguous()
    static_runs = torch.empty(num_pairs, num_tokens, dtype=torch.float32, device=similarity.device)
    histogram = None
    if threshold is not None:
        histogram = torch.zeros(num_pairs, num_pairs + 1, dtype=torch.int32, device=similarity.device)
    if num_pairs and num_tokens:
        _run_statistics_kernel[(triton.cdiv(num_tokens, _BLOCK),)](
            similarity,
            static_runs,
            static_runs if histogram is None else histogram,
            num_pairs,
            num_tokens,
            float(static_threshold),
            float(static_threshold if threshold is None else threshold),
            PAIRS_BOUND=triton.next_power_of_2(num_pairs),
            BLOCK=_BLOCK,
            HISTOGRAM=histogram is not None,
            num_warps=4,
        )
    if histogram is None:
        return static_runs, None
    at_least = histogram.flip(1).cumsum(1, dtype=torch.int64).flip(1)[:, 1:]
    return static_runs, at_least

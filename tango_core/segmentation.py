"""Temporal segmentation of a clip into runs of similar frames (spec section 4.1).

The similarity statistics are computed on the device in a few batched kernels; the dynamic
programme over frames then runs on the host on an (N, N) table (N is at most a few hundred).
"""

from __future__ import annotations

from typing import List

import numpy as np
import torch
import torch.nn.functional as F

HOLITOM_MAX_WINDOW = 1024


def consecutive_token_similarity(features: torch.Tensor) -> torch.Tensor:
    """cos(F[n, l], F[n+1, l]) in float32. features: (N, L, D) -> (N-1, L)."""
    x = F.normalize(features.float(), dim=-1)
    return (x[:-1] * x[1:]).sum(dim=-1)


def consecutive_frame_similarity(global_features: torch.Tensor) -> torch.Tensor:
    """cos(G[n], G[n+1]) in float32. global_features: (N, D') -> (N-1,)."""
    g = F.normalize(global_features.float(), dim=-1)
    return (g[:-1] * g[1:]).sum(dim=-1)


def run_lengths(above: torch.Tensor) -> torch.Tensor:
    """For each pair n and position l, how many consecutive pairs n, n+1, ... are all True.

    above: (N-1, L) bool -> (N-1, L) int64. A static window of frames s..e (s < e) at position l
    is exactly ``run[s, l] >= e - s``.
    """
    num_pairs = above.shape[0]
    if num_pairs == 0:
        return torch.zeros_like(above, dtype=torch.int64)
    steps = torch.arange(num_pairs, device=above.device).unsqueeze(-1).expand_as(above)
    # Index of the first False at or after each pair (num_pairs if none), via a reversed cummin.
    first_false = torch.where(above, torch.full_like(steps, num_pairs), steps)
    first_false = first_false.flip(0).cummin(dim=0).values.flip(0)
    return first_false - steps


def holitom_window_values(runs: torch.Tensor) -> torch.Tensor:
    """``value[s, e] = (e - s) * m(s, e)`` for every window s <= e, 0 elsewhere (spec 4.1).

    runs: (N-1, L) run lengths of ``sim > tau``. Returns (N, N) int64, ``m(s, e)`` being the number
    of positions whose run from pair s reaches pair e - 1.
    """
    num_frames = runs.shape[0] + 1
    values = torch.zeros(num_frames, num_frames, dtype=torch.int64, device=runs.device)
    if num_frames == 1:
        return values
    # histogram[s, j] = number of positions with run length exactly j (j = 0 .. N-1).
    histogram = torch.zeros(num_frames - 1, num_frames, dtype=torch.int64, device=runs.device)
    histogram.scatter_add_(1, runs, torch.ones_like(runs))
    at_least = histogram.flip(1).cumsum(1).flip(1)  # at_least[s, j] = #positions with run >= j
    span = torch.arange(num_frames, device=runs.device)
    ends = span.view(1, -1)  # e
    starts = span[:-1].view(-1, 1)  # s
    length = ends - starts  # e - s
    valid = (length >= 1) & (length <= min(HOLITOM_MAX_WINDOW - 1, num_frames - 1))
    counts = torch.gather(at_least, 1, length.clamp(0, num_frames - 1))
    values[:-1] = torch.where(valid, length * counts, torch.zeros_like(counts))
    return values


def holitom_segments(values: np.ndarray) -> List[int]:
    """Dynamic programme of spec 4.1 on the host. values: (N, N) window values -> segment lengths."""
    num_frames = values.shape[0]
    best = np.zeros(num_frames + 1, dtype=np.int64)  # best[i + 1] = best(i); best[0] = best(-1) = 0
    start = np.zeros(num_frames, dtype=np.int64)
    for i in range(num_frames):
        best[i + 1] = best[i]
        start[i] = i
        lowest = max(0, i - HOLITOM_MAX_WINDOW + 1)
        if i == 0 or lowest > i - 1:
            continue
        # Window starts from i-1 down to `lowest` (window sizes 2, 3, ...); first strict max wins.
        starts = np.arange(i - 1, lowest - 1, -1)
        totals = best[starts] + values[starts, i]
        pick = int(np.argmax(totals))
        if totals[pick] > best[i + 1]:
            best[i + 1] = totals[pick]
            start[i] = starts[pick]
    lengths: List[int] = []
    end = num_frames - 1
    while end >= 0:
        lengths.append(int(end - start[end] + 1))
        end = int(start[end]) - 1
    return lengths[::-1]


def fastvid_segments(frame_similarity: np.ndarray, below_threshold: np.ndarray, num_cuts: int) -> List[int]:
    """Cut after the ``min(C-1, N-1)`` least similar boundaries (ties: lower n) and where sim < tau.

    frame_similarity: (N-1,) similarities; below_threshold: (N-1,) bool ``sim < tau`` (compared on
    the device in float32). Returns segment lengths.
    """
    num_pairs = frame_similarity.shape[0]
    cut = below_threshold.astype(bool).copy()
    forced = min(num_cuts - 1, num_pairs)
    if forced > 0:
        cut[np.argsort(frame_similarity, kind="stable")[:forced]] = True
    boundaries = np.flatnonzero(cut) + 1  # a segment starts after each cut
    edges = np.concatenate(([0], boundaries, [num_pairs + 1]))
    return [int(x) for x in np.diff(edges)]

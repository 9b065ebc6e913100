"""Temporal segmentation of a clip into runs of similar frames (spec section 4.1).

Similarities, their threshold comparisons (float32, as the reference compares), run lengths and
the run-length counts behind HoliTom's window values are computed on the device (these PyTorch
forms, or the fused kernel of :mod:`tango_core.kernels.segmentation`); they come to the host
once, where the dynamic programme over frames (N is a few hundred at most) is cheap Python work
instead of many tiny device kernels.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

HOLITOM_MAX_WINDOW = 1024


def consecutive_token_similarity(unit: torch.Tensor) -> torch.Tensor:
    """cos(F[n, l], F[n+1, l]) from l2-normalised float32 features: (N, L, D) -> (N-1, L)."""
    return torch.linalg.vecdot(unit[:-1], unit[1:])


def token_statistics(features: torch.Tensor, extended: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """features (N, L, D), any float dtype, copied in float32 into the first N * L rows of the
    (R, D) float32 table ``extended``. Returns their (N, L) l2 norms and the (N-1, L)
    :func:`consecutive_token_similarity` of the unit features."""
    num_frames, num_tokens, dim = features.shape
    features32 = extended[: num_frames * num_tokens].view(num_frames, num_tokens, dim)
    features32.copy_(features)
    norms = torch.linalg.vector_norm(features32, dim=-1)  # as F.normalize computes them
    return norms, consecutive_token_similarity(features32 / norms.clamp_min(1e-12).unsqueeze(-1))


def consecutive_frame_similarity(global_features: torch.Tensor) -> torch.Tensor:
    """cos(G[n], G[n+1]) in float32. global_features: (N, D') -> (N-1,)."""
    g = F.normalize(global_features.float(), dim=-1)
    return (g[:-1] * g[1:]).sum(dim=-1)


def run_lengths_on_device(above: torch.Tensor) -> torch.Tensor:
    """For each pair n and position l, how many consecutive pairs n, n+1, ... are all True.

    above: (N-1, L) bool -> (N-1, L) int64. A static window of frames s..e (s < e) at position l
    is exactly ``run[s, l] >= e - s``.
    """
    num_pairs = above.shape[0]
    steps = torch.arange(num_pairs, device=above.device).view(-1, 1)
    first_false = torch.where(above, num_pairs, steps)
    first_false = first_false.flip(0).cummin(0).values.flip(0)
    return first_false - steps


def run_length_counts(runs: torch.Tensor) -> torch.Tensor:
    """``at_least[s, j]``: positions whose run from pair s has length >= j + 1.

    runs: (N-1, L) int64 run lengths (:func:`run_lengths_on_device`). Returns (N-1, N-1) int64
    (integer histograms: exact and deterministic on any device).
    """
    num_pairs = runs.shape[0]
    histogram = torch.zeros(num_pairs, num_pairs + 1, dtype=torch.int64, device=runs.device)
    histogram.scatter_add_(1, runs, torch.ones_like(runs))
    return histogram.flip(1).cumsum(1).flip(1)[:, 1:]


def run_statistics(
    similarity: torch.Tensor, static_threshold: float, threshold: Optional[float]
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(N-1, L) int64 run lengths of ``similarity > static_threshold``, and unless ``threshold``
    is None the (N-1, N-1) :func:`run_length_counts` of the runs of ``similarity > threshold``."""
    static_runs = run_lengths_on_device(similarity > static_threshold)
    if threshold is None:
        return static_runs, None
    return static_runs, run_length_counts(run_lengths_on_device(similarity > threshold))


def holitom_segments_from_counts(at_least: np.ndarray) -> List[int]:
    """HoliTom's dynamic programme (spec 4.1) from the (N-1, N-1) counts of :func:`run_length_counts`.

    ``value(s, e) = (e - s) * at_least[s, e - s - 1]``. best(i) = max(best(i-1), max over s < i of
    best(s-1) + value(s, i)), windows ending at frame i tried from the shortest, the first strict
    maximum winning. ``m(s, i)`` only shrinks as s moves left, so once it is 0 every longer window
    is worth 0 and cannot beat ``best(i - 1)``: the search stops there. Returns segment lengths.
    """
    num_frames = at_least.shape[0] + 1
    rows = at_least.tolist()  # rows[s][j]: positions whose run from pair s covers j + 1 pairs
    best = [0] * (num_frames + 1)  # best[i + 1] = best(i); best[0] = best(-1) = 0
    start = list(range(num_frames))
    for i in range(1, num_frames):
        top, pick = best[i], -1
        for s in range(i - 1, max(0, i - HOLITOM_MAX_WINDOW + 1) - 1, -1):
            count = rows[s][i - s - 1]
            if count == 0:
                break
            total = best[s] + (i - s) * count
            if total > top:
                top, pick = total, s
        best[i + 1] = top
        if pick >= 0:
            start[i] = pick
    return _backtrack(start)


def _backtrack(start: List[int]) -> List[int]:
    """Segment lengths from the chosen segment start of every last frame (the programme's record)."""
    lengths: List[int] = []
    end = len(start) - 1
    while end >= 0:
        lengths.append(end - start[end] + 1)
        end = start[end] - 1
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

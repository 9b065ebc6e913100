"""Temporal segmentation of a clip into runs of similar frames (spec section 4.1).

Similarities, their threshold comparisons (float32, as the reference compares), run lengths and
the run-length counts behind HoliTom's window values are computed on the device; they come to
the host once, where the dynamic programme over frames (N is a few hundred at most) is cheap
numpy work instead of many tiny device kernels. The numpy :func:`run_lengths` and
:func:`holitom_window_values` are the host references of the device functions.
"""

from __future__ import annotations

from typing import List

import numpy as np
import torch
import torch.nn.functional as F

HOLITOM_MAX_WINDOW = 1024


def consecutive_token_similarity(unit: torch.Tensor) -> torch.Tensor:
    """cos(F[n, l], F[n+1, l]) from l2-normalised float32 features: (N, L, D) -> (N-1, L)."""
    return torch.linalg.vecdot(unit[:-1], unit[1:])


def consecutive_frame_similarity(global_features: torch.Tensor) -> torch.Tensor:
    """cos(G[n], G[n+1]) in float32. global_features: (N, D') -> (N-1,)."""
    g = F.normalize(global_features.float(), dim=-1)
    return (g[:-1] * g[1:]).sum(dim=-1)


def run_lengths(above: np.ndarray) -> np.ndarray:
    """For each pair n and position l, how many consecutive pairs n, n+1, ... are all True.

    above: (N-1, L) bool -> (N-1, L) int64. A static window of frames s..e (s < e) at position l
    is exactly ``run[s, l] >= e - s``.
    """
    num_pairs = above.shape[0]
    steps = np.broadcast_to(np.arange(num_pairs)[:, None], above.shape)
    # Index of the first False at or after each pair (num_pairs if none), via a reversed running min.
    first_false = np.where(above, num_pairs, steps)
    first_false = np.minimum.accumulate(first_false[::-1], axis=0)[::-1]
    return (first_false - steps).astype(np.int64)


def run_lengths_on_device(above: torch.Tensor) -> torch.Tensor:
    """:func:`run_lengths` as tensor operations (no host round trip): (N-1, L) bool -> int64."""
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


def holitom_values_from_counts(at_least: np.ndarray) -> np.ndarray:
    """(N, N) window values of spec 4.1 from the (N-1, N-1) counts of :func:`run_length_counts`."""
    num_frames = at_least.shape[0] + 1
    values = np.zeros((num_frames, num_frames), dtype=np.int64)
    if num_frames == 1:
        return values
    length = np.arange(num_frames)[None, :] - np.arange(num_frames - 1)[:, None]  # e - s
    valid = (length >= 1) & (length <= HOLITOM_MAX_WINDOW - 1)
    counts = np.take_along_axis(at_least, np.clip(length - 1, 0, num_frames - 2), axis=1)
    values[:-1] = np.where(valid, length * counts, 0)
    return values


def holitom_window_values(runs: np.ndarray) -> np.ndarray:
    """``value[s, e] = (e - s) * m(s, e)`` for every window s < e, 0 elsewhere (spec 4.1).

    runs: (N-1, L) run lengths of ``sim > tau``. Returns (N, N) int64, ``m(s, e)`` being the number
    of positions whose run from pair s reaches pair e - 1. (Host reference of
    :func:`run_length_counts` followed by :func:`holitom_values_from_counts`.)
    """
    num_frames = runs.shape[0] + 1
    if num_frames == 1:
        return np.zeros((1, 1), dtype=np.int64)
    # histogram[s, j] = number of positions whose run from pair s has length exactly j.
    flat = (np.arange(num_frames - 1)[:, None] * num_frames + runs).ravel()
    histogram = np.bincount(flat, minlength=(num_frames - 1) * num_frames).reshape(num_frames - 1, num_frames)
    at_least = np.cumsum(histogram[:, ::-1], axis=1)[:, ::-1]  # at_least[s, j]: runs >= j
    return holitom_values_from_counts(at_least[:, 1:])


def holitom_segments(values: np.ndarray, python_below: int = 48) -> List[int]:
    """Dynamic programme of spec 4.1 on the host. values: (N, N) window values -> segment lengths.

    best(i) = max(best(i-1), max over s < i of best(s-1) + value[s, i]), candidates taken from the
    largest s down (window sizes 2, 3, ...), the first strict maximum winning. Below
    ``python_below`` frames plain Python loops are faster than numpy's per-call overhead.
    """
    num_frames = values.shape[0]
    best = [0] * (num_frames + 1)  # best[i + 1] = best(i); best[0] = best(-1) = 0
    start = list(range(num_frames))
    if num_frames < python_below:
        columns = values.T.tolist()  # columns[i][s] = value[s, i]
        for i in range(1, num_frames):
            column, top, pick = columns[i], best[i], -1
            for s in range(i - 1, max(0, i - HOLITOM_MAX_WINDOW + 1) - 1, -1):
                total = best[s] + column[s]
                if total > top:
                    top, pick = total, s
            best[i + 1] = top
            if pick >= 0:
                start[i] = pick
    else:
        columns = np.ascontiguousarray(values.T)
        best_array = np.zeros(num_frames + 1, dtype=np.int64)
        for i in range(1, num_frames):
            lowest = max(0, i - HOLITOM_MAX_WINDOW + 1)
            # totals[j] for s = i - 1 - j (descending s); argmax returns the first maximum.
            totals = (best_array[lowest:i] + columns[i, lowest:i])[::-1]
            pick = int(totals.argmax())
            top = int(totals[pick])
            best[i + 1] = best[i]
            if top > best[i]:
                best[i + 1] = top
                start[i] = i - 1 - pick
            best_array[i + 1] = best[i + 1]
    return _backtrack(start)


def _backtrack(start: List[int]) -> List[int]:
    """Segment lengths from the chosen segment start of every last frame (the programme's record)."""
    lengths: List[int] = []
    end = len(start) - 1
    while end >= 0:
        lengths.append(end - start[end] + 1)
        end = start[end] - 1
    return lengths[::-1]


def holitom_segments_from_counts(at_least: np.ndarray) -> List[int]:
    """:func:`holitom_segments` straight from the (N-1, N-1) counts of :func:`run_length_counts`.

    ``value(s, e) = (e - s) * at_least[s, e - s - 1]``. Windows ending at frame i are tried from the
    shortest; ``m(s, i)`` only shrinks as s moves left, so once it is 0 every longer window is
    worth 0 and cannot beat ``best(i - 1)``: the search stops there. Same result as
    :func:`holitom_segments` on :func:`holitom_values_from_counts`, in a fraction of its steps.
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

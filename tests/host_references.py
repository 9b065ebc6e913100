"""Host (numpy) forms that the tests compare the library against: per-problem DPC-KNN tables
built from sizes, and HoliTom's window values and full dynamic programme (spec 4.1, 4.6)."""

from __future__ import annotations

from typing import List

import numpy as np
import torch

from tango_core.segmentation import HOLITOM_MAX_WINDOW
from tango_core.types import ProblemTables


def problem_arrays(
    sizes: np.ndarray, centres: np.ndarray, num_neighbors: int, width: int | None = None, most: int | None = None
) -> dict:
    """numpy arrays of :class:`ProblemTables` for problems of ``sizes`` points and ``centres`` centres.

    ``width`` / ``most``: padded point and centre counts (default: the largest of each). Problems of
    size 0 are padding: no valid points, no valid centres.
    """
    width = int(sizes.max()) if width is None else int(width)
    most = int(centres.max()) if most is None else int(most)
    valid = np.arange(width)[None, :] < sizes[:, None]
    centre_valid = np.arange(most)[None, :] < centres[:, None]
    used = np.minimum(num_neighbors + 1, sizes) - 1
    return {
        "valid": valid,
        "invalid": ~valid,
        "centre_valid": centre_valid,
        "centre_invalid": ~centre_valid,
        "neg_inv_neighbours": (-1.0 / np.maximum(used, 1)).astype(np.float32)[:, None],
        "keep_all": ((sizes <= centres) | (sizes <= 1))[:, None],
    }


def problem_tables(
    sizes: np.ndarray, centres: np.ndarray, num_neighbors: int, device: torch.device | str = "cpu"
) -> ProblemTables:
    """:class:`ProblemTables` on ``device``, built on the host from the problems' sizes."""
    arrays = problem_arrays(np.asarray(sizes, dtype=np.int64), np.asarray(centres, dtype=np.int64), num_neighbors)
    return ProblemTables(**{name: torch.from_numpy(np.ascontiguousarray(a)).to(device) for name, a in arrays.items()})


def run_lengths(above: np.ndarray) -> np.ndarray:
    """numpy form of :func:`tango_core.segmentation.run_lengths_on_device`: (N-1, L) bool -> int64."""
    num_pairs = above.shape[0]
    steps = np.broadcast_to(np.arange(num_pairs)[:, None], above.shape)
    # Index of the first False at or after each pair (num_pairs if none), via a reversed running min.
    first_false = np.where(above, num_pairs, steps)
    first_false = np.minimum.accumulate(first_false[::-1], axis=0)[::-1]
    return (first_false - steps).astype(np.int64)


def holitom_values_from_counts(at_least: np.ndarray) -> np.ndarray:
    """(N, N) window values of spec 4.1 from the (N-1, N-1) counts of ``run_length_counts``."""
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
    of positions whose run from pair s reaches pair e - 1.
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
    """The dynamic programme of spec 4.1 on full window values (N, N) -> segment lengths.

    best(i) = max(best(i-1), max over s < i of best(s-1) + value[s, i]), candidates taken from the
    largest s down (window sizes 2, 3, ...), the first strict maximum winning. Below
    ``python_below`` frames with Python loops, else with numpy.
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
    lengths: List[int] = []
    end = num_frames - 1
    while end >= 0:
        lengths.append(end - start[end] + 1)
        end = start[end] - 1
    return lengths[::-1]

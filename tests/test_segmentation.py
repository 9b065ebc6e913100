"""Temporal segmentation on hand-made similarity patterns (spec 4.1)."""

import itertools

import numpy as np
import pytest
import torch
from host_references import (
    holitom_segments,
    holitom_values_from_counts,
    holitom_window_values,
    run_lengths,
)

from tango_core.segmentation import (
    fastvid_segments,
    holitom_segments_from_counts,
    run_length_counts,
    run_lengths_on_device,
)


def _brute_force_values(above: np.ndarray) -> np.ndarray:
    num_frames = above.shape[0] + 1
    values = np.zeros((num_frames, num_frames), dtype=np.int64)
    for s in range(num_frames):
        for e in range(s + 1, num_frames):
            values[s, e] = (e - s) * int(above[s:e].all(axis=0).sum())
    return values


def _library_segments(above: np.ndarray):
    """The pipeline's programme (device run-length counts, then the host) on ``above``."""
    counts = run_length_counts(run_lengths_on_device(torch.from_numpy(above)))
    return holitom_segments_from_counts(counts.numpy())


def _best_partition_value(values: np.ndarray, lengths):
    total, start = 0, 0
    for length in lengths:
        total += values[start, start + length - 1] if length > 1 else 0
        start += length
    return total


def test_run_lengths_and_window_values_match_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        above = rng.random((rng.integers(1, 9), 5)) < 0.7
        values = holitom_window_values(run_lengths(above))
        np.testing.assert_array_equal(values, _brute_force_values(above))


def test_holitom_dp_is_optimal_on_small_patterns():
    rng = np.random.default_rng(1)
    for _ in range(30):
        num_frames = int(rng.integers(1, 8))
        above = rng.random((num_frames - 1, 4)) < 0.75
        values = _brute_force_values(above)
        lengths = holitom_segments(values)
        assert sum(lengths) == num_frames and all(length >= 1 for length in lengths)
        best = 0
        for cuts in itertools.product([0, 1], repeat=num_frames - 1):
            partition, run = [], 1
            for cut in cuts:
                if cut:
                    partition.append(run)
                    run = 1
                else:
                    run += 1
            partition.append(run)
            best = max(best, _best_partition_value(values, partition))
        assert _best_partition_value(values, lengths) == best
        assert _library_segments(above) == lengths


def test_holitom_hand_made_scenes():
    # Frames 0-3 identical, a cut, frames 4-6 identical: two segments.
    above = np.array([[1, 1], [1, 1], [1, 1], [0, 0], [1, 1], [1, 1]], dtype=bool)
    assert holitom_segments(_brute_force_values(above)) == [4, 3]
    assert _library_segments(above) == [4, 3]
    # Nothing similar: every frame alone.
    assert holitom_segments(_brute_force_values(np.zeros((3, 2), bool))) == [1, 1, 1, 1]
    assert _library_segments(np.zeros((3, 2), bool)) == [1, 1, 1, 1]


def test_holitom_tie_keeps_earlier_smaller_window():
    # One position similar across pairs 0 and 1 only: [0,1,2] is worth 2, same as nothing better.
    above = np.array([[1], [1]], dtype=bool)
    assert holitom_segments(_brute_force_values(above)) == [3]
    assert _library_segments(above) == [3]
    # Equal totals for [0,1],[2] vs [0],[1,2]: the DP keeps the earlier decision at each frame.
    above = np.array([[1, 0], [0, 1]], dtype=bool)
    values = _brute_force_values(above)
    assert holitom_segments(values) == [2, 1]
    assert _library_segments(above) == [2, 1]


def test_fastvid_cuts_at_least_similar_and_below_threshold():
    sim = np.array([0.9, 0.2, 0.95, 0.5, 0.99], dtype=np.float32)
    # C = 2 -> one forced cut at the least similar boundary (after frame 1).
    assert fastvid_segments(sim, sim < 0.1, 2) == [2, 4]
    # Threshold 0.6 adds the cut after frame 3.
    assert fastvid_segments(sim, sim < 0.6, 2) == [2, 2, 2]
    # Ties are broken by lower index; C larger than the boundaries cuts everywhere.
    tied = np.array([0.5, 0.5, 0.5], dtype=np.float32)
    assert fastvid_segments(tied, tied < 0.0, 2) == [1, 3]
    assert fastvid_segments(tied, tied < 0.0, 8) == [1, 1, 1, 1]


@pytest.mark.parametrize("seed", range(6))
def test_device_run_lengths_and_window_counts_match_the_host_reference(seed):
    rng = np.random.default_rng(seed)
    num_frames, num_tokens = int(rng.integers(2, 40)), int(rng.integers(1, 30))
    above = rng.random((num_frames - 1, num_tokens)) < rng.random()
    runs = run_lengths_on_device(torch.from_numpy(above))
    np.testing.assert_array_equal(runs.numpy(), run_lengths(above))
    values = holitom_values_from_counts(run_length_counts(runs).numpy())
    np.testing.assert_array_equal(values, holitom_window_values(run_lengths(above)))


@pytest.mark.parametrize("seed", range(4))
def test_python_and_numpy_programmes_agree(seed):
    rng = np.random.default_rng(seed)
    num_frames = int(rng.integers(2, 90))
    above = rng.random((num_frames - 1, 13)) < rng.random()
    values = holitom_window_values(run_lengths(above))
    assert holitom_segments(values, python_below=0) == holitom_segments(values, python_below=10**6)


@pytest.mark.parametrize("seed", range(8))
def test_counts_programme_with_early_stop_matches_the_full_programme(seed):
    rng = np.random.default_rng(100 + seed)
    num_frames, num_tokens = int(rng.integers(1, 70)), int(rng.integers(1, 20))
    # Scenes of nearly static frames with cuts, plus noise: long windows and early stops both occur.
    above = rng.random((max(num_frames - 1, 0), num_tokens)) < rng.uniform(0.5, 1.0)
    cuts = rng.random(max(num_frames - 1, 0)) < 0.15
    above[cuts] = False
    counts = run_length_counts(run_lengths_on_device(torch.from_numpy(above))).numpy()
    expected = holitom_segments(holitom_values_from_counts(counts), python_below=10**6)
    assert holitom_segments_from_counts(counts) == expected

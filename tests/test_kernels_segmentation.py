"""The fused segmentation-statistics kernel against the PyTorch forms (tango_core.segmentation)."""

import pytest

pytest.importorskip("triton")

import torch

from tango_core import segmentation
from tango_core.kernels.segmentation import run_statistics
from tango_core.segmentation import run_length_counts, run_lengths_on_device

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("num_frames,num_tokens,seed", [(2, 1, 0), (5, 7, 1), (17, 130, 2), (33, 3, 3)])
def test_run_statistics_equal_the_pytorch_forms(num_frames, num_tokens, seed):
    gen = torch.Generator().manual_seed(seed)
    # Similarities near both thresholds, exact threshold values included (strict comparisons).
    similarity = torch.rand(num_frames - 1, num_tokens, generator=gen) * 0.5 + 0.5
    similarity.view(-1)[::5] = 0.8
    similarity.view(-1)[1::7] = 0.65
    static_runs, at_least = run_statistics(similarity.to(DEVICE), 0.8, 0.65)
    expected_runs = run_lengths_on_device(similarity > 0.8)
    assert torch.equal(static_runs.cpu(), expected_runs.float())
    expected_counts = run_length_counts(run_lengths_on_device(similarity > 0.65))
    assert at_least.dtype == torch.int64 and torch.equal(at_least.cpu(), expected_counts)
    pytorch_runs, pytorch_counts = segmentation.run_statistics(similarity, 0.8, 0.65)  # the PyTorch form
    assert torch.equal(pytorch_runs, expected_runs) and torch.equal(pytorch_counts, expected_counts)


def test_run_statistics_without_histogram_and_of_a_view():
    table = torch.full((5, 2), -1.0)
    table[1:4] = torch.tensor([[0.9, 0.1], [0.95, 0.9], [0.2, 0.99]])
    table = table.to(DEVICE)
    runs, counts = run_statistics(table[1:4], 0.8, None)  # similarities inside a larger table
    assert counts is None
    assert torch.equal(runs.cpu(), torch.tensor([[2.0, 0.0], [1.0, 2.0], [0.0, 1.0]]))
    assert torch.equal(table[0].cpu(), torch.tensor([-1.0, -1.0])) and torch.equal(table[4].cpu(), torch.tensor([-1.0, -1.0]))
    assert segmentation.run_statistics(table[1:4].cpu(), 0.8, None)[1] is None

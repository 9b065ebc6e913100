"""The fused top-k ranking against a stable descending sort."""

import pytest

pytest.importorskip("triton")

import torch

from tango_core.kernels.ranking import top_ranked

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("rows,width,count,seed", [(1, 1, 1, 0), (3, 7, 7, 1), (5, 300, 40, 2), (2, 513, 3, 3)])
def test_top_ranked_equals_the_stable_descending_sort(rows, width, count, seed):
    gen = torch.Generator().manual_seed(seed)
    # Few distinct values (many exact ties) and -inf entries, as masked saliency and scores have.
    values = torch.randint(0, 5, (rows, width), generator=gen).float() / 4
    values[torch.rand(rows, width, generator=gen) < 0.2] = float("-inf")
    expected = torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :count]
    assert torch.equal(top_ranked(values.to(DEVICE), count).cpu(), expected)


def test_top_ranked_on_strided_rows_and_bad_counts():
    values = torch.tensor([[0.5, 9.0, 0.5, 2.0, 1.0, 2.0]])
    view = values[:, ::2]  # [0.5, 0.5, 1.0]
    assert top_ranked(view.to(DEVICE), 3).cpu().tolist() == [[2, 0, 1]]
    assert top_ranked(values.to(DEVICE), 0).shape == (1, 0)
    with pytest.raises(ValueError, match="count"):
        top_ranked(values.to(DEVICE), 7)


def test_ascending_ranking_of_integers_equals_the_stable_sort():
    gen = torch.Generator().manual_seed(5)
    values = torch.randint(0, 50, (1, 700), generator=gen)  # ids with repeats (padding sentinels)
    expected = torch.sort(values, dim=-1, stable=True).indices
    assert torch.equal(top_ranked(values.to(DEVICE), 700, descending=False).cpu(), expected)

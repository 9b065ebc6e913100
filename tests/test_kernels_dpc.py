"""Fused DPC-KNN kernels against the PyTorch forms of tango_core.dpc (spec 4.6).

Without a GPU the kernels run in Triton's interpreter (see conftest.py), so problems stay small.
"""

import pytest

pytest.importorskip("triton")

import numpy as np
import torch

from host_references import problem_arrays, problem_tables

from tango_core.dpc import NEG_INF, POS_INF, dpc_knn_centres, split_points
from tango_core.kernels import dpc as kernels
from tango_core.types import SPLIT_SCALE, ProblemTables

MAX_WIDTH = kernels.MAX_WIDTH
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _on_device(function):
    """``function`` run on DEVICE (natively on a GPU; here in the interpreter), results back on the CPU."""

    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(DEVICE)
        if isinstance(value, ProblemTables):
            return ProblemTables(**{name: move(tensor) for name, tensor in vars(value).items()})
        return value

    def run(*args, **kwargs):
        out = function(*(move(a) for a in args), **{k: move(v) for k, v in kwargs.items()})
        return tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()

    return run


dpc_scores = _on_device(kernels.dpc_scores)
peak_distances_and_density = _on_device(kernels.peak_distances_and_density)
peak_scores = _on_device(kernels.peak_scores)

TOL = {"rtol": 1e-6, "atol": 1e-6}


def _gram_products(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gram, cross, squared_norms) of (P, M, D) float32 points, as the CUDA path forms them."""
    split = split_points(points)
    high, low = split.high.float(), split.low.float()
    return high @ high.transpose(1, 2), high @ low.transpose(1, 2), split.squared_norms


def _peaks(
    gram: torch.Tensor, cross: torch.Tensor, squared_norms: torch.Tensor, tables: ProblemTables, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return peak_distances_and_density(gram, cross, squared_norms, tables.valid, tables.neg_inv_neighbours, k)


def _reference_distances(gram: torch.Tensor, cross: torch.Tensor, squared_norms: torch.Tensor) -> torch.Tensor:
    """pairwise_distances' epilogue."""
    g = (gram + cross + cross.transpose(1, 2)) * (1.0 / (SPLIT_SCALE * SPLIT_SCALE))
    squared = (squared_norms.unsqueeze(-1) + squared_norms.unsqueeze(1)).sub_(g, alpha=2.0)
    return squared.clamp_(min=0.0).sqrt_()


def _reference_density(distances: torch.Tensor, tables: ProblemTables, k: int) -> torch.Tensor:
    """density_peak_scores' densities."""
    masked = distances.masked_fill(tables.invalid.unsqueeze(1), POS_INF)
    nearest = masked.topk(min(k + 1, distances.shape[-1]), dim=-1, largest=False).values[..., 1:]
    squared = (nearest * nearest).nan_to_num_(posinf=0.0)
    return torch.exp(squared.sum(-1) * tables.neg_inv_neighbours).masked_fill_(tables.invalid, NEG_INF)


def _reference_scores(distances: torch.Tensor, density: torch.Tensor, tables: ProblemTables) -> torch.Tensor:
    """density_peak_scores' scores from its densities."""
    pair_valid = tables.valid.unsqueeze(-1) & tables.valid.unsqueeze(1)
    largest = (distances * pair_valid).amax(dim=(1, 2)).view(-1, 1, 1)
    denser = density.unsqueeze(1) > density.unsqueeze(2)
    delta = torch.where(denser, distances, largest).amin(dim=-1)
    return (density * delta).masked_fill_(tables.invalid, NEG_INF)


def _padded(problems: list[torch.Tensor], garbage_seed: int = 0) -> torch.Tensor:
    """(P, M, D) batch of (M_p, D) problems; padding rows hold random points (they must be inert)."""
    gen = torch.Generator().manual_seed(garbage_seed)
    width = max(p.shape[0] for p in problems)
    batch = torch.randn(len(problems), width, problems[0].shape[1], generator=gen)
    batch = batch / batch.norm(dim=-1, keepdim=True)
    for index, points in enumerate(problems):
        batch[index, : points.shape[0]] = points
    return batch


def _unit_points(size: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    points = torch.randn(size, dim, generator=gen)
    return points / points.norm(dim=-1, keepdim=True)


def _check_against_reference(
    batch: torch.Tensor, sizes: list[int], k: int, centres: list[int] | None = None
) -> torch.Tensor:
    """Kernel outputs vs the PyTorch forms, and the centre order vs dpc_knn_centres. Returns the
    kernel's (P, M) densities."""
    tables = problem_tables(sizes, sizes if centres is None else centres, k)
    gram, cross, norms = _gram_products(batch)
    distances, density, row_max = _peaks(gram, cross, norms, tables, k)
    score = peak_scores(distances, density, row_max, tables.valid)

    expected_distances = _reference_distances(gram, cross, norms)
    expected_density = _reference_density(expected_distances, tables, k)
    expected_score = _reference_scores(expected_distances, expected_density, tables)
    torch.testing.assert_close(distances, expected_distances, **TOL)
    torch.testing.assert_close(density, expected_density, **TOL)
    torch.testing.assert_close(score, expected_score, **TOL)
    pair_valid = tables.valid.unsqueeze(-1) & tables.valid.unsqueeze(1)
    assert torch.equal(row_max.amax(-1), (distances * pair_valid).amax(dim=(1, 2)))
    assert torch.equal(row_max[tables.invalid], torch.zeros(int(tables.invalid.sum())))
    assert torch.isneginf(density[tables.invalid]).all() and torch.isneginf(score[tables.invalid]).all()

    order = torch.sort(score, dim=-1, descending=True, stable=True).indices[:, : tables.centre_valid.shape[1]]
    expected_order = dpc_knn_centres(expected_distances, tables, k)
    assert torch.equal(order[tables.centre_valid], expected_order[tables.centre_valid])
    for row, size in enumerate(sizes):  # invalid columns never chosen as valid centres
        assert (order[row][tables.centre_valid[row]] < size).all()
    return density


@pytest.mark.parametrize("k", [1, 7])
def test_matches_pytorch_on_random_problems(k):
    gen = torch.Generator().manual_seed(10 + k)
    width = 24
    sizes = [1, 2, k + 1, k + 2, 13, width]
    batch = _padded([_unit_points(size, 32, gen) for size in sizes], garbage_seed=k)
    _check_against_reference(batch, sizes, k)


def test_matches_pytorch_on_a_wide_problem():
    gen = torch.Generator().manual_seed(20)
    sizes = [130, 67, 3]
    batch = _padded([_unit_points(size, 16, gen) for size in sizes])
    _check_against_reference(batch, sizes, 7, centres=[20, 9, 3])


def test_duplicate_points():
    gen = torch.Generator().manual_seed(30)
    points = _unit_points(14, 24, gen)
    points[3] = points[0]
    points[5] = points[0]
    points[9] = points[0]
    points[7] = points[2]
    points[11] = points[2]
    batch = _padded([points, points[:6]])
    _check_against_reference(batch, [14, 6], 7)


@pytest.mark.parametrize("k", [2, 3, 7])
def test_exact_ties_collinear_points(k):
    # Dyadic positions on a line: distances, squares and the density sums are exact, so equal
    # neighbourhoods give bitwise-equal densities (strict ">" matters) and scores tie exactly.
    positions = torch.tensor([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.25, 1.5, 1.75, 2.0, 3.0, 3.0, 3.25, 3.5])
    points = torch.zeros(positions.shape[0], 8)
    points[:, 0] = positions
    evenly = torch.zeros(9, 8)
    evenly[:, 1] = torch.arange(9) * 0.125
    batch = _padded([points, evenly], garbage_seed=5)
    gram, cross, norms = _gram_products(batch)
    distances = _reference_distances(gram, cross, norms)
    assert (distances[0, 0] == 0.0).sum() == 2 and (distances[0, 5] == 0.0).sum() == 3  # ties at zero
    density = _check_against_reference(batch, [positions.shape[0], 9], k, centres=[6, 4])
    assert density[1, 3] == density[1, 5] and density[0, 0] == density[0, 1]  # mirror images, duplicates


def test_padding_is_inert():
    gen = torch.Generator().manual_seed(40)
    small = _unit_points(5, 16, gen)
    # Padding points duplicating valid ones would change densities and deltas if they counted.
    padded = torch.cat([small, small[:3], small[:3] * 1.001]).unsqueeze(0)
    arrays = problem_arrays(np.array([5]), np.array([5]), 7, width=padded.shape[1])
    tables = ProblemTables(**{name: torch.from_numpy(array) for name, array in arrays.items()})
    gram, cross, norms = _gram_products(padded)
    distances, density, row_max = _peaks(gram, cross, norms, tables, 7)
    score = peak_scores(distances, density, row_max, tables.valid)
    assert torch.isneginf(density[0, 5:]).all() and torch.isneginf(score[0, 5:]).all()
    assert torch.equal(row_max[0, 5:], torch.zeros(6))

    alone = (gram[:, :5, :5].contiguous(), cross[:, :5, :5].contiguous(), norms[:, :5].contiguous())
    alone_distances, alone_score = dpc_scores(*alone, problem_tables([5], [5], 7), 7)
    assert torch.equal(distances[0, :5, :5], alone_distances[0])
    assert torch.equal(score[0, :5], alone_score[0])


def test_peak_scores_tie_rules():
    # One problem of 4 valid points + 1 padding, hand-made distances.
    distances = torch.tensor(
        [
            [0.0, 1.0, 2.0, 3.0, 0.5],
            [1.0, 0.0, 4.0, 0.5, 0.5],
            [2.0, 4.0, 0.0, 6.0, 0.5],
            [3.0, 0.5, 6.0, 0.0, 0.5],
            [0.5, 0.5, 0.5, 0.5, 0.0],
        ]
    ).unsqueeze(0)
    valid = torch.tensor([[True, True, True, True, False]])
    density = torch.tensor([[0.5, 0.5, 0.25, 0.5, NEG_INF]])
    row_max = torch.tensor([[3.0, 4.0, 6.0, 6.0, 0.0]])
    score = peak_scores(distances, density, row_max, valid)
    # Equal densities are not denser: 0, 1, 3 have none (delta = largest = 6); 2 -> nearest 0.
    expected = torch.tensor([[0.5 * 6.0, 0.5 * 6.0, 0.25 * 2.0, 0.5 * 6.0, NEG_INF]])
    assert torch.equal(score, expected)
    tables = ProblemTables(
        valid=valid,
        invalid=~valid,
        centre_valid=valid,
        centre_invalid=~valid,
        neg_inv_neighbours=torch.full((1, 1), -1.0),
        keep_all=torch.zeros(1, 1, dtype=torch.bool),
    )
    reference = _reference_scores(distances, density, tables)
    assert torch.equal(score, reference)


def test_k_larger_than_every_problem():
    gen = torch.Generator().manual_seed(50)
    sizes = [3, 4, 1, 0]  # the last problem is all padding
    batch = _padded([_unit_points(size, 20, gen) for size in sizes])
    _check_against_reference(batch, sizes, 7)  # kk = min(8, M) = M = 4 for every problem


def test_rejects_problems_wider_than_max_width():
    width = MAX_WIDTH + 1
    square = torch.zeros(1, 1, 1).expand(1, width, width)
    row = torch.zeros(1, 1).expand(1, width)
    with pytest.raises(ValueError, match="up to"):
        peak_distances_and_density(square, square, row, row.bool(), torch.zeros(1, 1), 7)
    with pytest.raises(ValueError, match="up to"):
        peak_scores(square, row, row, row.bool())


def test_wrapper_matches_the_two_kernels_and_leaves_inputs_unchanged():
    gen = torch.Generator().manual_seed(60)
    sizes = [6, 4]
    batch = _padded([_unit_points(size, 16, gen) for size in sizes])
    tables = problem_tables(sizes, [3, 2], 7)
    inputs = list(_gram_products(batch))
    copies = [t.clone() for t in inputs]
    distances, score = dpc_scores(*inputs, tables, 7)
    assert all(torch.equal(a, b) for a, b in zip(inputs, copies))
    expected_distances, density, row_max = _peaks(*inputs, tables, 7)
    assert torch.equal(distances, expected_distances)
    assert torch.equal(score, peak_scores(expected_distances, density, row_max, tables.valid))

"""Fused clustering-tail kernels against the PyTorch forms of tango_core.dpc (spec 4.4, 4.5).

Without a GPU the kernels run in Triton's interpreter (see conftest.py), so problems stay small.
"""

import pytest

pytest.importorskip("triton")

import torch  # noqa: E402

from host_references import problem_tables  # noqa: E402

from tango_core import dpc  # noqa: E402
from tango_core.dpc import assign_to_nearest, dpc_knn_centres  # noqa: E402
from tango_core.kernels import clusters as kernels  # noqa: E402
from tango_core.types import ProblemTables  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K = 7


def _on_device(function):
    """``function`` run on DEVICE (natively on a GPU; here in the interpreter), results back on the CPU."""

    def move(value):
        return value.to(DEVICE) if isinstance(value, torch.Tensor) else value

    def run(*args, **kwargs):
        return function(*(move(a) for a in args), **{k: move(v) for k, v in kwargs.items()}).cpu()

    return run


nearest_centres = _on_device(kernels.nearest_centres)
best_members = _on_device(kernels.best_members)
merge_clusters = _on_device(kernels.merge_clusters)


def _unit_points(size: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    points = torch.randn(size, dim, generator=gen)
    return points / points.norm(dim=-1, keepdim=True)


def _batch(problems: list[torch.Tensor], width: int, gen: torch.Generator) -> torch.Tensor:
    """(P, width, D) batch of (M_p, D) problems; padding rows hold random points (they must be inert)."""
    batch = _unit_points(len(problems) * width, problems[0].shape[1], gen).view(len(problems), width, -1)
    for index, points in enumerate(problems):
        batch[index, : points.shape[0]] = points
    return batch


def _clustered(sizes: list[int], centres: list[int], dim: int, seed: int, width: int | None = None):
    """(distances, centres, tables) of random problems, centres from dpc_knn_centres."""
    gen = torch.Generator().manual_seed(seed)
    width = max(sizes) if width is None else width
    points = _batch([_unit_points(size, dim, gen) for size in sizes], width, gen)
    tables = _padded_tables(sizes, centres, width)
    distances = torch.cdist(points, points)
    return distances, dpc_knn_centres(distances, tables, K), tables


def _padded_tables(sizes: list[int], centres: list[int], width: int) -> ProblemTables:
    """problem_tables with ``width`` padded points (its own default is the largest size)."""
    tables = problem_tables(sizes, centres, K)
    pad = width - tables.valid.shape[1]
    if pad:
        tables.valid = torch.nn.functional.pad(tables.valid, (0, pad))
        tables.invalid = ~tables.valid
    return tables


def _check_assignment(distances: torch.Tensor, centres: torch.Tensor, tables: ProblemTables) -> torch.Tensor:
    """nearest_centres vs assign_to_nearest on valid points, the sentinel on the others."""
    assignment = nearest_centres(distances, centres, tables.valid, tables.centre_valid)
    expected = assign_to_nearest(distances, centres, tables)
    assert assignment.dtype == torch.int64 and assignment.shape == tables.valid.shape
    assert torch.equal(assignment[tables.valid], expected[tables.valid])
    assert (assignment[tables.invalid] == centres.shape[1]).all()
    return assignment


def _reference_best_members(assignment: torch.Tensor, tables: ProblemTables) -> torch.Tensor:
    """The best member of each slot, as tango_core.dpc.best_members computes it."""
    slots = torch.arange(tables.centre_valid.shape[1])
    membership = (assignment.unsqueeze(-1) == slots) & tables.valid.unsqueeze(-1)
    return membership.to(torch.uint8).argmax(dim=1)


def _reference_merge(
    features: torch.Tensor, assignment: torch.Tensor, anchors: torch.Tensor, tables: ProblemTables, beta: float
) -> torch.Tensor:
    """tango_core.dpc.merge_clusters on gathered (P, M, D) features."""
    slots = torch.arange(anchors.shape[1]).view(1, -1, 1)
    members = ((assignment.unsqueeze(1) == slots) & tables.valid.unsqueeze(1)).to(features.dtype)
    counts = members.sum(-1, keepdim=True)
    means = torch.bmm(members, features).div_(counts)
    anchor_features = features.gather(1, anchors.unsqueeze(-1).expand(-1, -1, features.shape[-1]))
    weight = counts.reciprocal().clamp_(min=beta)
    return torch.lerp(means, anchor_features, weight)


def _anchors_by_position(centres: torch.Tensor, tables: ProblemTables) -> torch.Tensor:
    """tango_core.clustering.merge_into_anchors' ``by_position``."""
    width = tables.valid.shape[1]
    return torch.sort(centres.masked_fill(tables.centre_invalid, width), dim=-1).values.clamp_(max=width - 1)


def _scattered_rows(num_problems: int, width: int, spare: int, gen: torch.Generator) -> torch.Tensor:
    """(P, M) distinct rows of a table of ``P * M + spare`` rows, in random order."""
    return torch.randperm(num_problems * width + spare, generator=gen)[: num_problems * width].view(num_problems, width)


def _check_merge(distances, centres, tables, dim: int, beta: float, seed: int) -> torch.Tensor:
    """merge_clusters vs the PyTorch form on valid slots, zeros on the others. Returns the
    kernel's merged features."""
    gen = torch.Generator().manual_seed(seed)
    num_problems, width = tables.valid.shape
    anchors = _anchors_by_position(centres, tables)
    assignment = _check_assignment(distances, anchors, tables)
    features = torch.randn(num_problems * width + 9, dim, generator=gen) * 3.0
    member_rows = _scattered_rows(num_problems, width, 9, gen)
    inputs = (features, member_rows, assignment, anchors, tables.centre_valid)
    copies = [t.clone() for t in inputs]
    merged = merge_clusters(*inputs, beta)
    assert all(torch.equal(a, b) for a, b in zip(inputs, copies))

    gathered = features[member_rows]  # (P, M, D)
    expected = _reference_merge(gathered, assignment, anchors, tables, beta)
    library = dpc.merge_clusters(distances, anchors, features, member_rows, tables, beta)
    assert torch.equal(library[tables.centre_valid], expected[tables.centre_valid])
    assert merged.dtype == torch.float32 and merged.shape == (num_problems, anchors.shape[1], dim)
    valid = tables.centre_valid
    scale = gathered.abs().amax()
    torch.testing.assert_close(merged[valid], expected[valid], rtol=1e-5, atol=1e-5 * float(scale))
    assert (merged[~valid] == 0).all()

    # Clusters of one point (and beta = 1) keep the anchor's feature exactly.
    counts = torch.stack([(assignment == slot).sum(1) for slot in range(anchors.shape[1])], 1)
    exact = valid & ((counts == 1) | (beta == 1.0))
    anchor_features = gathered.gather(1, anchors.unsqueeze(-1).expand(-1, -1, dim))
    assert torch.equal(merged[exact], anchor_features[exact])
    return merged


@pytest.mark.parametrize("dim", [24, 40])
def test_nearest_centres_and_best_members_on_random_problems(dim):
    sizes = [1, 2, 5, 13, 24, 9, 0]
    centres = [1, 3, 3, 4, 6, 9, 0]  # keep-all problems (M_p <= k', one with a padding centre), an empty one
    distances, found, tables = _clustered(sizes, centres, dim, seed=dim, width=27)
    assignment = _check_assignment(distances, found, tables)
    expected = assign_to_nearest(distances, found, tables)
    members = best_members(assignment, found.shape[1])
    assert members.dtype == torch.int64 and members.shape == found.shape
    assert torch.equal(members, _reference_best_members(expected, tables))
    assert torch.equal(members, dpc.best_members(distances, found, tables))


def test_many_centres_span_several_tiles():
    # 150 centres: two centre tiles of the assignment kernel, several slot blocks of best_members.
    distances, found, tables = _clustered([200, 170], [150, 140], 12, seed=3)
    assignment = _check_assignment(distances, found, tables)
    members = best_members(assignment, found.shape[1])
    assert torch.equal(members, _reference_best_members(assign_to_nearest(distances, found, tables), tables))


def test_duplicate_points_and_ties():
    gen = torch.Generator().manual_seed(30)
    points = _unit_points(12, 24, gen)
    points[4] = points[1]  # a centre coincident with centre 1
    points[10] = points[1]  # a duplicate of both that is not a centre
    points[7] = points[2]  # a duplicate of centre 2 that is not a centre
    points[9] = (points[1] + points[3]) / 2  # about equidistant to centres 3 and 1
    batch = points.unsqueeze(0)
    distances = torch.cdist(batch, batch)
    distances[0, 9, 3] = distances[0, 9, 1]  # exactly equidistant
    assert distances[0, 9, 1] == distances[0, 9, 4] and distances[0, 9, 1] < distances[0, 9, [0, 2]].min()
    centres = torch.tensor([[3, 1, 4, 2, 0]])
    tables = problem_tables([12], [5], K)
    assignment = _check_assignment(distances, centres, tables)
    assert assignment[0, 1] == 1 and assignment[0, 4] == 2  # coincident centres claim themselves
    assert assignment[0, 10] == 1  # at distance 0 of slots 1 and 2: the lower slot
    assert assignment[0, 7] == 3
    assert assignment[0, 9] == 0  # equidistant to slots 0, 1 and 2: the lowest
    members = best_members(assignment, 5)
    assert torch.equal(members, _reference_best_members(assignment, tables))


def test_exact_ties_across_centre_tiles():
    # Distances from {1, 2, 3}: exact ties everywhere, between slots of different centre tiles too.
    gen = torch.Generator().manual_seed(31)
    width, num_slots = 300, 260
    distances = torch.randint(1, 4, (2, width, width), generator=gen).float()
    centres = torch.stack([torch.randperm(width, generator=gen)[:num_slots] for _ in range(2)])
    tables = problem_tables([width, 280], [num_slots, 200], K)
    tables.valid = torch.nn.functional.pad(tables.valid, (0, width - tables.valid.shape[1]))
    tables.invalid = ~tables.valid
    centres[1, 200:] = centres[1, 0]  # padding slots holding a valid centre
    assignment = _check_assignment(distances, centres, tables)
    assert torch.equal(best_members(assignment, num_slots), _reference_best_members(assignment, tables))


def test_strided_inputs():
    distances, found, tables = _clustered([9, 14, 5], [3, 5, 2], 16, seed=4)
    num_problems, width = tables.valid.shape
    # Column-major distances with spare rows, centres and valid masks slices of wider tables.
    transposed = torch.zeros(num_problems, width + 4, width)
    transposed[:, 1 : 1 + width] = distances.transpose(1, 2)
    wide_centres = torch.zeros(found.shape[1] + 3, num_problems, dtype=torch.int64)
    wide_centres[1:-2] = found.t()
    wide_valid = torch.zeros(num_problems, width + 5, dtype=torch.bool)
    wide_valid[:, 2 : 2 + width] = tables.valid
    assignment = nearest_centres(
        transposed[:, 1 : 1 + width].transpose(1, 2),
        wide_centres[1:-2].t(),
        wide_valid[:, 2 : 2 + width],
        tables.centre_valid.t().contiguous().t(),
    )
    assert torch.equal(assignment, _check_assignment(distances, found, tables))


@pytest.mark.parametrize("beta", [0.6, 0.0, 1.0])
def test_merge_clusters_matches_pytorch(beta):
    sizes = [20, 1, 6, 0, 15, 3]
    centres = [5, 1, 3, 0, 6, 2]  # one and three anchors of three points: clusters of one
    distances, found, tables = _clustered(sizes, centres, 32, seed=7, width=22)
    _check_merge(distances, found, tables, 36, beta, seed=8)


def test_merge_clusters_with_many_members():
    # Clusters of dozens of points: several member chunks, sums of many terms.
    distances, found, tables = _clustered([90, 70], [3, 2], 8, seed=9)
    _check_merge(distances, found, tables, 20, 0.0, seed=10)


def test_merge_clusters_of_wide_features():
    # D = 3584: several channel blocks, the last one partial.
    distances, found, tables = _clustered([7, 4], [3, 2], 24, seed=11)
    _check_merge(distances, found, tables, 3584, 0.6, seed=12)


def test_padding_is_inert():
    gen = torch.Generator().manual_seed(13)
    distances, found, tables = _clustered([8, 5], [3, 2], 16, seed=13)
    num_problems, width = tables.valid.shape
    anchors = _anchors_by_position(found, tables)
    assignment = nearest_centres(distances, anchors, tables.valid, tables.centre_valid)
    features = torch.randn(num_problems * width, 24, generator=gen)
    member_rows = torch.arange(num_problems * width).view(num_problems, width)
    merged = merge_clusters(features, member_rows, assignment, anchors, tables.centre_valid, 0.6)
    # Padding points pointing at wild rows, padding slots with other anchors, change nothing.
    padded_rows = member_rows.masked_fill(tables.invalid, 0)
    padded_anchors = anchors.masked_fill(tables.centre_invalid, 1)
    again = merge_clusters(features, padded_rows, assignment, padded_anchors, tables.centre_valid, 0.6)
    assert torch.equal(merged, again)
    alone_tables = problem_tables([5], [2], K)
    alone = merge_clusters(
        features, member_rows[1:, :5], assignment[1:, :5], anchors[1:, :2], alone_tables.centre_valid, 0.6
    )
    assert torch.equal(merged[1, :2], alone[0])


def test_empty_batches(monkeypatch):
    for name in ("_nearest_centres_kernel", "_slot_summary_kernel", "_merge_kernel"):
        monkeypatch.setattr(kernels, name, None)  # any launch fails

    def empty(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype)

    def flags(*shape: int) -> torch.Tensor:
        return empty(*shape, dtype=torch.bool)

    def ids(*shape: int) -> torch.Tensor:
        return empty(*shape, dtype=torch.int64)

    assert nearest_centres(empty(0, 4, 4), ids(0, 2), flags(0, 4), flags(0, 2)).shape == (0, 4)
    assert nearest_centres(empty(3, 0, 0), ids(3, 2), flags(3, 0), flags(3, 2)).shape == (3, 0)
    no_slots = nearest_centres(empty(2, 3, 3), ids(2, 0), torch.ones(2, 3, dtype=torch.bool), flags(2, 0))
    assert torch.equal(no_slots, ids(2, 3))  # the sentinel A = 0
    assert best_members(ids(2, 5), 0).shape == (2, 0)
    assert best_members(ids(0, 5), 3).shape == (0, 3)
    features = torch.randn(6, 5)
    assert merge_clusters(features, ids(2, 3), ids(2, 3), ids(2, 0), flags(2, 0), 0.6).shape == (2, 0, 5)
    assert merge_clusters(features, ids(0, 3), ids(0, 3), ids(0, 2), flags(0, 2), 0.6).shape == (0, 2, 5)


def test_bad_arguments_are_refused():
    distances, found, tables = _clustered([5], [2], 8, seed=14)
    with pytest.raises(ValueError, match="distances"):
        kernels.nearest_centres(distances.double(), found, tables.valid, tables.centre_valid)
    with pytest.raises(ValueError, match="centres"):
        kernels.nearest_centres(distances, found.int(), tables.valid, tables.centre_valid)
    with pytest.raises(ValueError, match="assignment"):
        kernels.best_members(found.int(), 2)
    with pytest.raises(ValueError, match="features"):
        kernels.merge_clusters(torch.zeros(5, 3, dtype=torch.float64), found, found, found, tables.centre_valid, 0.6)

"""Batched DPC-KNN clustering and the two ways Tango uses it (spec 4.4, 4.5, 4.6).

Every function works on a padded batch of independent problems: ``points`` (P, M, D) float32
whose first ``M_p`` rows of problem p are valid. Per-problem sizes are known on the host before
any of this runs, so the small per-problem tables (:class:`ProblemTables`) are built there and
passed in: the device only runs the (P, M, M) work, in as few kernels as possible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

NEG_INF = float("-inf")
POS_INF = float("inf")


@dataclass
class ProblemTables:
    """Host-built description of a padded batch of P problems of at most M points, A centres.

    valid / invalid: (P, M) bool point masks. centre_valid / centre_invalid: (P, A) bool.
    neg_inv_neighbours: (P, 1) float32, ``-1 / (min(k + 1, M_p) - 1)`` (0 for a single point).
    keep_all: (P, 1) bool, problems that keep their candidates without clustering.
    """

    valid: torch.Tensor
    invalid: torch.Tensor
    centre_valid: torch.Tensor
    centre_invalid: torch.Tensor
    neg_inv_neighbours: torch.Tensor
    keep_all: torch.Tensor


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
    """:class:`ProblemTables` on ``device`` (one small copy per table; the pipeline batches them)."""
    arrays = problem_arrays(np.asarray(sizes, dtype=np.int64), np.asarray(centres, dtype=np.int64), num_neighbors)
    return ProblemTables(**{name: torch.from_numpy(np.ascontiguousarray(a)).to(device) for name, a in arrays.items()})


SPLIT_SCALE = 1024.0  # see pairwise_distances


@dataclass
class SplitPoints:
    """Points split for tensor-core distances: ``points * 2**10 = high + low`` in fp16.

    high, low: (..., M, D) float16; squared_norms: (..., M) float32 squared norms of the points.
    """

    high: torch.Tensor
    low: torch.Tensor
    squared_norms: torch.Tensor

    def index_select(self, rows: torch.Tensor) -> "SplitPoints":
        """Rows of a (R, D) table."""
        return SplitPoints(self.high.index_select(0, rows), self.low.index_select(0, rows), self.squared_norms.index_select(0, rows))

    def view(self, *shape: int) -> "SplitPoints":
        """(R, D) rows viewed as ``shape`` + (D,)."""
        dim = self.high.shape[-1]
        return SplitPoints(self.high.view(*shape, dim), self.low.view(*shape, dim), self.squared_norms.view(*shape))


Points = Union[torch.Tensor, SplitPoints]


def split_points(points: torch.Tensor) -> SplitPoints:
    """:class:`SplitPoints` of float32 points with coordinates below 64 in magnitude."""
    return split_scaled_points(points * SPLIT_SCALE)


def split_scaled_points(scaled: torch.Tensor) -> SplitPoints:
    """:class:`SplitPoints` of points given already multiplied by :data:`SPLIT_SCALE` (float32)."""
    high = scaled.half()
    low = torch.empty_like(high)
    torch.sub(scaled, high, out=low)  # float32 difference, rounded once to fp16
    squared_norms = torch.linalg.vecdot(scaled, scaled).mul_(1.0 / (SPLIT_SCALE * SPLIT_SCALE))
    return SplitPoints(high, low, squared_norms)


def half_products(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ right.T`` of (P, M, D) float16 batches with float32 accumulation -> (P, M, M)
    float32 (tensor cores on CUDA; elsewhere the same exact products, in float32)."""
    if left.is_cuda:
        return torch.bmm(left, right.transpose(1, 2), out_dtype=torch.float32)
    return torch.bmm(left.float(), right.float().transpose(1, 2))


def pairwise_distances(points: Points) -> torch.Tensor:
    """Euclidean distances, float32 accuracy. points: (P, M, D) float32 or split -> (P, M, M).

    On CUDA the Gram matrix runs on tensor cores as two fp16 products with float32 accumulation
    of a hi/lo split of the points (``x = hi + lo``, 22 significant bits; ``lo @ lo.T`` is below
    float32 rounding and dropped), several times faster than a float32 GEMM at D = 3584. Points
    are scaled by 2**10 first so that ``lo`` stays in fp16's normal range, which needs
    coordinates below 64 in magnitude: ST-RoPE features have unit norm. :class:`SplitPoints`
    (split once per token by the caller; CUDA only, as the fp16 products with float32 output
    are) take this path directly; float32 tensors are split here on CUDA and go to
    ``torch.cdist`` elsewhere.
    """
    if isinstance(points, torch.Tensor):
        if not points.is_cuda:
            return torch.cdist(points, points)
        points = split_points(points)
    gram = half_products(points.high, points.high)
    cross = half_products(points.high, points.low)
    gram = (gram + cross + cross.transpose(1, 2)) * (1.0 / (SPLIT_SCALE * SPLIT_SCALE))
    squared_norms = points.squared_norms
    squared = (squared_norms.unsqueeze(-1) + squared_norms.unsqueeze(1)).sub_(gram, alpha=2.0)
    return squared.clamp_(min=0.0).sqrt_()



def density_peak_scores(distances: torch.Tensor, tables: ProblemTables, num_neighbors: int) -> torch.Tensor:
    """DPC-KNN score ``rho * delta`` of every point, -inf on padding. distances: (P, M, M) float32 -> (P, M)."""
    invalid_cols = tables.invalid.unsqueeze(1)
    masked = distances.masked_fill(invalid_cols, POS_INF)
    # kk = min(k + 1, M_p) nearest distances, self included; the nearest (self) is dropped.
    nearest_count = min(num_neighbors + 1, distances.shape[-1])
    nearest = masked.topk(nearest_count, dim=-1, largest=False).values[..., 1:]
    squared = (nearest * nearest).nan_to_num_(posinf=0.0)  # padding beyond M_p counts as 0
    density = torch.exp(squared.sum(-1) * tables.neg_inv_neighbours).masked_fill_(tables.invalid, NEG_INF)
    pair_valid = tables.valid.unsqueeze(-1) & tables.valid.unsqueeze(1)
    largest = (distances * pair_valid).amax(dim=(1, 2)).view(-1, 1, 1)  # distances >= 0
    denser = density.unsqueeze(1) > density.unsqueeze(2)  # [p, i, j]: rho_j > rho_i
    # min over denser points, capped by the largest distance: delta, or the largest if none.
    delta = torch.where(denser, distances, largest).amin(dim=-1)
    return (density * delta).masked_fill_(tables.invalid, NEG_INF)


def centres_by_score(score: torch.Tensor, tables: ProblemTables, fused: bool = False) -> torch.Tensor:
    """(P, A) point indices of the highest scores, highest first (ties: lower index first).
    ``fused``: the ranking kernel of :mod:`tango_core.kernels.ranking` (same result)."""
    count = tables.centre_valid.shape[1]
    if fused:
        from .kernels.ranking import top_ranked

        return top_ranked(score, count)
    return torch.sort(score, dim=-1, descending=True, stable=True).indices[:, :count]


def dpc_knn_centres(distances: torch.Tensor, tables: ProblemTables, num_neighbors: int) -> torch.Tensor:
    """Density-peak centres of each problem, highest score first (ties: lower index first).

    distances: (P, M, M) float32. Returns (P, A) int64 point indices, A = tables' centre width;
    entries past a problem's own centre count are meaningless.
    """
    return centres_by_score(density_peak_scores(distances, tables, num_neighbors), tables)


def distances_and_centres(
    points: Points, tables: ProblemTables, num_neighbors: int, fused: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pairwise_distances` (P, M, M) and :func:`dpc_knn_centres` (P, A) of a padded batch.

    ``fused``: split points go through the fused Triton kernels of :mod:`tango_core.kernels.dpc`
    (the two fp16 products stay cuBLAS GEMMs), same results to float32 rounding. Callers ask for
    it on CUDA (:func:`tango_core.stages.fused_kernels_for`); ``fused`` arguments here and below
    mean "run the kernels", on whatever device the tensors are (the CPU: Triton's interpreter).
    """
    if fused and isinstance(points, SplitPoints):
        from .kernels.dpc import MAX_WIDTH, dpc_scores

        if points.high.shape[1] <= MAX_WIDTH:
            gram = half_products(points.high, points.high)
            cross = half_products(points.high, points.low)
            distances, score = dpc_scores(gram, cross, points.squared_norms, tables, num_neighbors)
            return distances, centres_by_score(score, tables, fused=True)
    distances = pairwise_distances(points)
    return distances, dpc_knn_centres(distances, tables, num_neighbors)


def assign_to_nearest(distances: torch.Tensor, centres: torch.Tensor, tables: ProblemTables) -> torch.Tensor:
    """Index (into ``centres``' columns) of each point's nearest centre; the first one wins ties.

    distances: (P, M, M); centres: (P, A) point indices. A valid centre is always assigned to
    itself, so no cluster is empty. Returns (P, M) int64.
    """
    size = distances.shape[1]
    to_centres = distances.gather(2, centres.unsqueeze(1).expand(-1, size, -1))
    assignment = to_centres.masked_fill_(tables.centre_invalid.unsqueeze(1), POS_INF).argmin(dim=-1)
    # Centres claim themselves; invalid centre slots write into a spare last column.
    own = torch.where(tables.centre_valid, centres, size)
    slots = torch.arange(centres.shape[1], device=centres.device).expand_as(centres)
    return torch.nn.functional.pad(assignment, (0, 1)).scatter_(1, own, slots)[:, :size]


def select_diverse_salient(points: Points, tables: ProblemTables, num_neighbors: int, fused: bool = False) -> torch.Tensor:
    """Diversity-driven salient selection (spec 4.4) on candidates in descending-saliency order.

    points: (P, M, D) float32 ST-RoPE features of the candidates. Returns (P, A) candidate indices:
    the first ``k'_p`` of row p are the picks (one per DPC-KNN cluster, its highest-saliency
    member); a problem with ``M_p <= k'_p`` or ``M_p <= 1`` keeps its candidates in order.
    ``fused``: see :func:`distances_and_centres`.
    """
    distances, centres = distances_and_centres(points, tables, num_neighbors, fused)
    slots = torch.arange(centres.shape[1], device=distances.device)
    # Candidates are sorted by saliency, so a cluster's best member is its first in order.
    if fused:
        from .kernels.clusters import best_members, nearest_centres

        assignment = nearest_centres(distances, centres, tables.valid, tables.centre_valid)
        best_member = best_members(assignment, centres.shape[1])
    else:
        assignment = assign_to_nearest(distances, centres, tables)  # (P, M)
        membership = (assignment.unsqueeze(-1) == slots) & tables.valid.unsqueeze(-1)
        best_member = membership.to(torch.uint8).argmax(dim=1)  # (P, A)
    return torch.where(tables.keep_all, slots, best_member)


def merge_into_anchors(
    points: Points,
    features: torch.Tensor,
    tables: ProblemTables,
    num_neighbors: int,
    beta: float,
    own_anchor_merge: bool,
    fused: bool = False,
    member_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor merging of context pools (spec 4.5).

    points: (P, M, D) float32 ST-RoPE features of the pools (ascending flat-index order);
    features: (P, M, D') float32 original features, or with ``member_rows`` (P, M) a (R, D')
    float32 table whose rows ``member_rows`` hold them. Returns ``(slots, merged)``: (P, A) pool
    indices where features are written and (P, A, D') float32 features written there (rows past a
    problem's anchor count are undefined). The feature merged for the i-th anchor in pool order is
    written at the i-th anchor in score order (the reference's pairing), or at its own anchor when
    ``own_anchor_merge``. ``fused``: see :func:`distances_and_centres`; the assignment and the
    cluster means run as fused kernels too, reading the feature rows in place.
    """
    distances, by_score = distances_and_centres(points, tables, num_neighbors, fused)
    size = distances.shape[1]
    # Invalid slots sort last, so valid anchors come first in ascending pool order.
    by_position = torch.sort(by_score.masked_fill(tables.centre_invalid, size), dim=-1).values.clamp_(max=size - 1)
    slots_out = by_position if own_anchor_merge else by_score
    if fused:
        from .kernels.clusters import merge_clusters, nearest_centres

        if member_rows is None:
            member_rows = torch.arange(features.shape[0] * size, device=features.device).view(-1, size)
            features = features.reshape(-1, features.shape[-1])
        assignment = nearest_centres(distances, by_position, tables.valid, tables.centre_valid)
        return slots_out, merge_clusters(features, member_rows, assignment, by_position, tables.centre_valid, beta)
    if member_rows is not None:
        features = features.index_select(0, member_rows.reshape(-1)).view(*member_rows.shape, features.shape[-1])
    assignment = assign_to_nearest(distances, by_position, tables)
    slots = torch.arange(by_position.shape[1], device=distances.device).view(1, -1, 1)
    members = ((assignment.unsqueeze(1) == slots) & tables.valid.unsqueeze(1)).to(features.dtype)  # (P, A, M)
    counts = members.sum(-1, keepdim=True)  # >= 1 for valid anchors
    means = torch.bmm(members, features).div_(counts)
    anchor_features = features.gather(1, by_position.unsqueeze(-1).expand(-1, -1, features.shape[-1]))
    weight = counts.reciprocal().clamp_(min=beta)  # max(1 / n, beta)
    merged = torch.lerp(means, anchor_features, weight)  # w * anchor + (1 - w) * mean
    return slots_out, merged

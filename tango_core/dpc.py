"""Batched DPC-KNN (spec 4.6) and its cluster tails (4.4, 4.5), in PyTorch.

Every function works on a padded batch of independent problems: ``points`` (P, M, D) whose first
``M_p`` rows of problem p are valid, described by :class:`~tango_core.types.ProblemTables`.
These are the PyTorch forms of :mod:`tango_core.ops`; the fused kernels of
:mod:`tango_core.kernels` compute the same quantities.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .types import SPLIT_SCALE, Points, ProblemTables, SplitPoints

NEG_INF = float("-inf")
POS_INF = float("inf")


def problem_tables(
    counts: torch.Tensor, width: int, most: int, num_neighbors: int
) -> Tuple[ProblemTables, Optional[torch.Tensor]]:
    """:class:`ProblemTables` of width ``width`` and ``most`` centres from per-problem counts.

    counts: (P, 2) int64 ``[points, centres]`` or (P, 3) with the first pool slot of each problem
    (padding rows zero). Also returns, with three columns, the (P, width) int64 pool slots of the
    problems' points, ``offset + min(j, max(points - 1, 0))`` (else None).
    """
    sizes, centres = counts[:, 0:1], counts[:, 1:2]
    columns = torch.arange(max(width, most), device=counts.device)
    valid = columns[:width] < sizes
    centre_valid = columns[:most] < centres
    used = (sizes.clamp_max(num_neighbors + 1) - 1).clamp_min(1)
    problems = ProblemTables(
        valid=valid,
        invalid=~valid,
        centre_valid=centre_valid,
        centre_invalid=~centre_valid,
        neg_inv_neighbours=torch.div(-1.0, used.float()),
        keep_all=sizes <= centres.clamp_min(1),
    )
    members = None
    if counts.shape[1] >= 3:
        members = counts[:, 2:3] + torch.minimum(columns[:width], (sizes - 1).clamp_min(0))
    return problems, members


def split_points(points: torch.Tensor) -> SplitPoints:
    """:class:`SplitPoints` of float32 points with coordinates below 64 in magnitude."""
    return split_scaled_points(points * SPLIT_SCALE)


def split_scaled_points(scaled: torch.Tensor) -> SplitPoints:
    """:class:`SplitPoints` of float32 points given already multiplied by ``SPLIT_SCALE``."""
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
    float32 rounding and dropped), several times faster than a float32 GEMM at D = 3584. The
    split needs coordinates below 64 in magnitude (``SPLIT_SCALE``): ST-RoPE features have unit
    norm. :class:`SplitPoints` take this path directly; float32 tensors are split here on CUDA
    and go to ``torch.cdist`` elsewhere.
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


def top_ranked(values: torch.Tensor, count: int) -> torch.Tensor:
    """(P, count) indices of each row's ``count`` largest values, largest first, ties by lower index."""
    return torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :count]


def dpc_knn_centres(distances: torch.Tensor, tables: ProblemTables, num_neighbors: int) -> torch.Tensor:
    """Density-peak centres of each problem, highest score first (ties: lower index first).

    distances: (P, M, M) float32. Returns (P, A) int64 point indices, A = tables' centre width;
    entries past a problem's own centre count are meaningless.
    """
    return top_ranked(density_peak_scores(distances, tables, num_neighbors), tables.centre_valid.shape[1])


def distances_and_centres(points: Points, tables: ProblemTables, num_neighbors: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`pairwise_distances` (P, M, M) and :func:`dpc_knn_centres` (P, A) of a padded batch."""
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


def best_members(distances: torch.Tensor, centres: torch.Tensor, tables: ProblemTables) -> torch.Tensor:
    """(P, A) lowest point of each centre's cluster (:func:`assign_to_nearest`); 0 for a slot
    without valid points. On candidates in descending saliency order: each cluster's best."""
    assignment = assign_to_nearest(distances, centres, tables)  # (P, M)
    slots = torch.arange(centres.shape[1], device=distances.device)
    membership = (assignment.unsqueeze(-1) == slots) & tables.valid.unsqueeze(-1)
    return membership.to(torch.uint8).argmax(dim=1)


def merge_clusters(
    distances: torch.Tensor,
    anchors: torch.Tensor,
    feature_rows: torch.Tensor,
    member_rows: torch.Tensor,
    tables: ProblemTables,
    beta: float,
) -> torch.Tensor:
    """Merged feature of every anchor: ``lerp(mean of its cluster, anchor, max(1 / n, beta))``.

    distances: (P, M, M); anchors: (P, A) point indices, ascending; feature_rows: (R, D') float32
    table whose rows ``member_rows`` (P, M) hold the points' original features. Clusters by
    :func:`assign_to_nearest`. Returns (P, A, D') float32 (undefined past a problem's anchors).
    """
    features = feature_rows.index_select(0, member_rows.reshape(-1)).view(*member_rows.shape, feature_rows.shape[-1])
    assignment = assign_to_nearest(distances, anchors, tables)
    slots = torch.arange(anchors.shape[1], device=distances.device).view(1, -1, 1)
    members = ((assignment.unsqueeze(1) == slots) & tables.valid.unsqueeze(1)).to(features.dtype)  # (P, A, M)
    counts = members.sum(-1, keepdim=True)  # >= 1 for valid anchors
    means = torch.bmm(members, features).div_(counts)
    anchor_features = features.gather(1, anchors.unsqueeze(-1).expand(-1, -1, features.shape[-1]))
    weight = counts.reciprocal().clamp_(min=beta)  # max(1 / n, beta)
    return torch.lerp(means, anchor_features, weight)  # w * anchor + (1 - w) * mean

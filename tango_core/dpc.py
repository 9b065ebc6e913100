"""Batched DPC-KNN clustering and the two ways Tango uses it (spec 4.4, 4.5, 4.6).

Every function works on a padded batch of independent problems: ``points`` (P, M, D) float32
with a validity mask (P, M); problem p has ``M_p`` valid points, always the first ``M_p`` rows.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")
POS_INF = float("inf")


def pairwise_distances(points: torch.Tensor) -> torch.Tensor:
    """Euclidean distances in float32. points: (P, M, D) -> (P, M, M)."""
    return torch.cdist(points, points)


def dpc_knn_centres(
    distances: torch.Tensor, valid: torch.Tensor, num_neighbors: int, num_centres: int
) -> torch.Tensor:
    """Density-peak centres of each problem, highest score first (ties: lower index first).

    distances: (P, M, M) float32; valid: (P, M) bool, a prefix of each row.
    Returns (P, num_centres) int64 indices into the points; entries past a problem's own centre
    count are meaningless and must be masked by the caller.
    """
    num_problems, size, _ = distances.shape
    valid_cols = valid.unsqueeze(1)  # (P, 1, M)
    points_per_problem = valid.sum(dim=-1, keepdim=True)  # (P, 1)
    # kk = min(k + 1, M_p) nearest distances, self included; the nearest (self) is dropped.
    nearest_count = min(num_neighbors + 1, size)
    masked = distances.masked_fill(~valid_cols, POS_INF)
    nearest = masked.topk(nearest_count, dim=-1, largest=False).values[..., 1:]  # (P, M, kk - 1)
    neighbours_used = (points_per_problem.clamp(max=num_neighbors + 1) - 1).unsqueeze(-1)  # (P, 1, 1)
    rank = torch.arange(nearest_count - 1, device=distances.device)
    used = rank < neighbours_used
    squared = torch.where(used, nearest * nearest, torch.zeros_like(nearest))
    density = torch.exp(-(squared.sum(-1) / neighbours_used.squeeze(-1).clamp(min=1)))  # (P, M)

    pair_valid = valid.unsqueeze(-1) & valid_cols
    largest = (distances * pair_valid).flatten(1).amax(dim=-1).view(num_problems, 1)  # distances >= 0
    denser = (density.unsqueeze(1) > density.unsqueeze(2)) & valid_cols  # denser[p, i, j]: rho_j > rho_i
    delta = torch.where(denser, distances, POS_INF).amin(dim=-1)
    delta = torch.where(torch.isinf(delta), largest, delta)
    score = (density * delta).masked_fill(~valid, NEG_INF)
    return torch.sort(score, dim=-1, descending=True, stable=True).indices[:, :num_centres]


def assign_to_nearest(
    distances: torch.Tensor, centres: torch.Tensor, centre_valid: torch.Tensor
) -> torch.Tensor:
    """Index (into ``centres``' columns) of each point's nearest centre; the first one wins ties.

    distances: (P, M, M); centres: (P, A) point indices; centre_valid: (P, A) bool.
    A centre is always assigned to itself, so no cluster is empty. Returns (P, M) int64.
    """
    to_centres = distances.gather(2, centres.unsqueeze(1).expand(-1, distances.shape[1], -1))
    to_centres = to_centres.masked_fill(~centre_valid.unsqueeze(1), POS_INF)
    assignment = to_centres.argmin(dim=-1)
    point_ids = torch.arange(distances.shape[1], device=distances.device).view(1, -1, 1)
    is_centre = (centres.unsqueeze(1) == point_ids) & centre_valid.unsqueeze(1)  # (P, M, A)
    own_cluster = is_centre.to(torch.uint8).argmax(dim=-1)
    return torch.where(is_centre.any(dim=-1), own_cluster, assignment)


def select_diverse_salient(
    points: torch.Tensor, valid: torch.Tensor, targets: torch.Tensor, num_targets: int, num_neighbors: int
) -> torch.Tensor:
    """Diversity-driven salient selection (spec 4.4) on candidates in descending-saliency order.

    points: (P, M, D) float32 ST-RoPE features; valid: (P, M); targets: (P,) int64 ``k'`` per
    problem, ``num_targets`` their maximum. Returns (P, num_targets) candidate indices: the first
    ``k'_p`` of row p are the picks (one per DPC-KNN cluster, its highest-saliency member); a
    problem with ``M_p <= k'_p`` or ``M_p <= 1`` keeps its candidates in order.
    """
    distances = pairwise_distances(points)
    centres = dpc_knn_centres(distances, valid, num_neighbors, num_targets)
    centre_valid = torch.arange(num_targets, device=points.device) < targets.unsqueeze(-1)
    assignment = assign_to_nearest(distances, centres, centre_valid)  # (P, M)
    # Candidates are sorted by saliency, so a cluster's best member is its first in order.
    membership = (assignment.unsqueeze(-1) == torch.arange(num_targets, device=points.device)) & valid.unsqueeze(-1)
    best_member = membership.to(torch.uint8).argmax(dim=1)  # (P, A): first True along M
    keep_all = (valid.sum(-1) <= targets) | (valid.sum(-1) <= 1)
    in_order = torch.arange(num_targets, device=points.device).expand_as(best_member)
    return torch.where(keep_all.unsqueeze(-1), in_order, best_member)


def merge_into_anchors(
    points: torch.Tensor,
    features: torch.Tensor,
    valid: torch.Tensor,
    num_anchors: torch.Tensor,
    max_anchors: int,
    num_neighbors: int,
    beta: float,
    own_anchor_merge: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor merging of context pools (spec 4.5).

    points: (P, M, D) float32 ST-RoPE features of the pools (ascending flat-index order);
    features: (P, M, D') float32 original features; valid: (P, M); num_anchors: (P,) int64.
    Returns ``(slots, merged)``: (P, max_anchors) pool indices where features are written and
    (P, max_anchors, D') float32 features written there. The feature merged for the i-th anchor
    in pool order is written at the i-th anchor in score order (the reference's pairing), or at
    its own anchor when ``own_anchor_merge``.
    """
    distances = pairwise_distances(points)
    by_score = dpc_knn_centres(distances, valid, num_neighbors, max_anchors)
    anchor_valid = torch.arange(max_anchors, device=points.device) < num_anchors.unsqueeze(-1)
    # Invalid slots sort last, so valid anchors come first in ascending pool order.
    sort_key = torch.where(anchor_valid, by_score, torch.full_like(by_score, points.shape[1]))
    by_position = torch.sort(sort_key, dim=-1).values.clamp(max=points.shape[1] - 1)
    assignment = assign_to_nearest(distances, by_position, anchor_valid)
    members = (assignment.unsqueeze(1) == torch.arange(max_anchors, device=points.device).view(1, -1, 1))
    members = (members & valid.unsqueeze(1)).to(features.dtype)  # (P, A, M)
    counts = members.sum(-1, keepdim=True)  # (P, A, 1), >= 1 for valid anchors
    means = torch.bmm(members, features) / counts.clamp(min=1)
    anchor_features = features.gather(1, by_position.unsqueeze(-1).expand(-1, -1, features.shape[-1]))
    weight = torch.maximum(1.0 / counts.clamp(min=1), torch.full_like(counts, beta))
    merged = weight * anchor_features + (1.0 - weight) * means
    slots = by_position if own_anchor_merge else by_score
    return slots, merged

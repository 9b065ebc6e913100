"""The two uses of DPC-KNN in Tango, on padded batches of problems (spec 4.4, 4.5).

Both run on ``points`` (P, M, D) (float32 or :class:`~tango_core.types.SplitPoints`) described
by :class:`~tango_core.types.ProblemTables`, through the operations of one backend
(:class:`~tango_core.ops.Ops`).
"""

from __future__ import annotations

from typing import Tuple

import torch

from .ops import Ops
from .types import Points, ProblemTables


def select_diverse_salient(points: Points, tables: ProblemTables, num_neighbors: int, ops: Ops) -> torch.Tensor:
    """Diversity-driven salient selection (spec 4.4) on candidates in descending-saliency order.

    points: (P, M, D) ST-RoPE features of the candidates. Returns (P, A) candidate indices: the
    first ``k'_p`` of row p are the picks (one per DPC-KNN cluster, its highest-saliency member,
    which is its first in candidate order); a problem with ``M_p <= k'_p`` or ``M_p <= 1`` keeps
    its candidates in order.
    """
    distances, centres = ops.distances_and_centres(points, tables, num_neighbors)
    best_member = ops.best_members(distances, centres, tables)
    slots = torch.arange(centres.shape[1], device=distances.device)
    return torch.where(tables.keep_all, slots, best_member)


def merge_into_anchors(
    points: Points,
    feature_rows: torch.Tensor,
    member_rows: torch.Tensor,
    tables: ProblemTables,
    num_neighbors: int,
    beta: float,
    own_anchor_merge: bool,
    ops: Ops,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Anchor merging of context pools (spec 4.5).

    points: (P, M, D) ST-RoPE features of the pools (ascending flat-index order); feature_rows:
    (R, D') float32 table whose rows ``member_rows`` (P, M) hold the points' original features.
    Returns ``(slots, merged)``: (P, A) pool indices where features are written and (P, A, D')
    float32 features written there (rows past a problem's anchor count are undefined). The
    feature merged for the i-th anchor in pool order is written at the i-th anchor in score order
    (the reference's pairing), or at its own anchor when ``own_anchor_merge``.
    """
    distances, by_score = ops.distances_and_centres(points, tables, num_neighbors)
    size = distances.shape[1]
    # Invalid slots sort last, so valid anchors come first in ascending pool order.
    by_position = torch.sort(by_score.masked_fill(tables.centre_invalid, size), dim=-1).values.clamp_(max=size - 1)
    merged = ops.merge_clusters(distances, by_position, feature_rows, member_rows, tables, beta)
    return (by_position if own_anchor_merge else by_score), merged

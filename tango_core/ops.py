"""The device operations of the fast pipeline, as PyTorch or as fused Triton kernels.

:func:`select_ops` makes the choice once per ``tango_prune`` call, from the execution options
and the device, and the stages call what it hands them (an :class:`Ops`). The two forms compute
the same quantities (to float32 rounding; counts and rankings exactly). The PyTorch forms live
in the algorithm modules (:mod:`~tango_core.segmentation`, :mod:`~tango_core.rope`,
:mod:`~tango_core.dpc`); the kernels in :mod:`tango_core.kernels`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable

import torch

from . import dpc, rope, segmentation
from .config import ExecutionOptions
from .kernels import HAVE_TRITON, MAX_STATISTICS_DIM
from .types import SPLIT_SCALE, SplitPoints


@dataclass(frozen=True)
class Ops:
    """One backend's device operations (shapes: N frames, L tokens, D channels, P problems of M
    points and A centres).

    token_statistics(features (N, L, D), extended (R, D)) -> norms (N, L), similarity (N-1, L);
        writes the features in float32 into the first N * L rows of ``extended``.
    run_statistics(similarity (N-1, L), static_threshold, threshold or None) -> static run
        lengths (N-1, L), HoliTom counts (N-1, N-1) or None.
    rope_points(extended, norms, times (N,), grid, sections, base_time, base_space) -> the
        (N * L, D) ST-RoPE point table (float32, or SplitPoints for tensor-core distances).
    problem_tables(counts (P, 2|3), width, most, num_neighbors) -> ProblemTables, pool slots.
    top_ranked(values (P, M), count) -> (P, count) indices of the largest, ties by lower index.
    sort_ids(ids (T,)) -> ascending ids (T,), their order (T,).
    distances_and_centres(points, tables, num_neighbors) -> distances (P, M, M), centres (P, A).
    best_members(distances, centres, tables) -> (P, A) lowest point of each centre's cluster.
    merge_clusters(distances, anchors (P, A), feature_rows (R, D'), member_rows (P, M), tables,
        beta) -> (P, A, D') merged anchor features.
    """

    name: str
    token_statistics: Callable
    run_statistics: Callable
    rope_points: Callable
    problem_tables: Callable
    top_ranked: Callable
    sort_ids: Callable
    distances_and_centres: Callable
    best_members: Callable
    merge_clusters: Callable


def _rope_rows(extended, norms, times, grid, sections, base_time, base_space) -> torch.Tensor:
    """PyTorch: the (N * L, D) float32 ST-RoPE rows of the unit features."""
    unit = rope.unit_features(extended, norms)
    return rope.rotate_unit_features(unit, grid, times, sections, base_time, base_space).view(-1, unit.shape[-1])


def _split_rope_rows(extended, norms, times, grid, sections, base_time, base_space) -> SplitPoints:
    """PyTorch on CUDA: the same rows (from the low-traffic scaled rotation, bitwise equal),
    split once per token for tensor-core distances."""
    unit = rope.unit_features(extended, norms)
    scaled = rope.rotate_unit_features_scaled(unit, grid, times, sections, base_time, base_space, SPLIT_SCALE)
    return dpc.split_scaled_points(scaled.view(-1, unit.shape[-1]))


def _sort_ids(ids: torch.Tensor):
    return torch.sort(ids)


PYTORCH = Ops(
    name="pytorch",
    token_statistics=segmentation.token_statistics,
    run_statistics=segmentation.run_statistics,
    rope_points=_rope_rows,
    problem_tables=dpc.problem_tables,
    top_ranked=dpc.top_ranked,
    sort_ids=_sort_ids,
    distances_and_centres=dpc.distances_and_centres,
    best_members=dpc.best_members,
    merge_clusters=dpc.merge_clusters,
)
"""PyTorch operations; float32 ST-RoPE points."""

PYTORCH_CUDA = replace(PYTORCH, name="pytorch-cuda", rope_points=_split_rope_rows)
"""PyTorch operations with split ST-RoPE points (fp16 tensor-core distances)."""


@lru_cache(maxsize=None)
def triton_ops() -> Ops:
    """The fused Triton kernels, with the PyTorch forms where a kernel does not apply
    (features wider than MAX_STATISTICS_DIM, problems wider than the DPC kernels' MAX_WIDTH)."""
    from .kernels import clusters, problems, ranking
    from .kernels import dpc as dpc_kernels
    from .kernels import rope as rope_kernels
    from .kernels import segmentation as segmentation_kernels

    def token_statistics(features, extended):
        if features.shape[-1] > MAX_STATISTICS_DIM:
            return segmentation.token_statistics(features, extended)
        return rope_kernels.token_statistics(features, extended)

    def sort_ids(ids):  # one short row: ranking beats a one-block sort
        order = ranking.top_ranked(ids.view(1, -1), ids.shape[0], descending=False).view(-1)
        return ids.index_select(0, order), order

    def distances_and_centres(points, tables, num_neighbors):
        if not isinstance(points, SplitPoints) or points.high.shape[1] > dpc_kernels.MAX_WIDTH:
            return dpc.distances_and_centres(points, tables, num_neighbors)
        gram = dpc.half_products(points.high, points.high)  # the two fp16 products stay cuBLAS GEMMs
        cross = dpc.half_products(points.high, points.low)
        distances, score = dpc_kernels.dpc_scores(gram, cross, points.squared_norms, tables, num_neighbors)
        return distances, ranking.top_ranked(score, tables.centre_valid.shape[1])

    def best_members(distances, centres, tables):
        assignment = clusters.nearest_centres(distances, centres, tables.valid, tables.centre_valid)
        return clusters.best_members(assignment, centres.shape[1])

    def merge_clusters(distances, anchors, feature_rows, member_rows, tables, beta):
        assignment = clusters.nearest_centres(distances, anchors, tables.valid, tables.centre_valid)
        return clusters.merge_clusters(feature_rows, member_rows, assignment, anchors, tables.centre_valid, beta)

    return Ops(
        name="triton",
        token_statistics=token_statistics,
        run_statistics=segmentation_kernels.run_statistics,
        rope_points=rope_kernels.rope_split,
        problem_tables=problems.problem_tables,
        top_ranked=ranking.top_ranked,
        sort_ids=sort_ids,
        distances_and_centres=distances_and_centres,
        best_members=best_members,
        merge_clusters=merge_clusters,
    )


def kernels_run_on(device: torch.device) -> bool:
    """Whether the Triton kernels compile for ``device``: CUDA, with Triton installed."""
    return device.type == "cuda" and HAVE_TRITON


def select_ops(execution: ExecutionOptions, device: torch.device) -> Ops:
    """The operations of one call on ``device``: the Triton kernels where asked for and
    available, else PyTorch (on CUDA with split points for tensor-core distances)."""
    if execution.fused_kernels and kernels_run_on(device):
        return triton_ops()
    return PYTORCH_CUDA if device.type == "cuda" else PYTORCH

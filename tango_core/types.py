"""Data types shared by the layers of ``tango_core``, from ``tango_prune`` down to the kernels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch

SPLIT_SCALE = 1024.0
"""Points are multiplied by 2**10 before their fp16 split, so that the low part stays in fp16's
normal range (coordinates below 64 in magnitude; see :func:`tango_core.dpc.pairwise_distances`)."""


@dataclass
class TangoResult:
    """keep_index: (K,) int64 sorted flat indices into the N*L tokens.
    kept_features: (K, D) features the LLM receives, in the input dtype.
    segments: frame count of each temporal segment, in order.
    """

    keep_index: torch.Tensor
    kept_features: torch.Tensor
    segments: List[int]


@dataclass(frozen=True)
class VideoInputs:
    """One validated video. features (N, L, D), saliency (N, L), grid (H, W) with H * W = L,
    timestamps (N,) seconds or None, global_features (N, D') or None; all on one device."""

    features: torch.Tensor
    saliency: torch.Tensor
    grid: Tuple[int, int]
    timestamps: Optional[torch.Tensor] = None
    global_features: Optional[torch.Tensor] = None


@dataclass
class ProblemTables:
    """Masks and weights of a padded batch of P DPC-KNN problems of at most M points, A centres.

    valid / invalid: (P, M) bool point masks. centre_valid / centre_invalid: (P, A) bool.
    neg_inv_neighbours: (P, 1) float32, ``-1 / (min(k + 1, M_p) - 1)`` (-1 for a single point).
    keep_all: (P, 1) bool, problems that keep their candidates without clustering.
    """

    valid: torch.Tensor
    invalid: torch.Tensor
    centre_valid: torch.Tensor
    centre_invalid: torch.Tensor
    neg_inv_neighbours: torch.Tensor
    keep_all: torch.Tensor


@dataclass
class SplitPoints:
    """Points split for tensor-core distances: ``points * SPLIT_SCALE = high + low`` in fp16.

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
"""Clustering features: float32 (..., M, D), or :class:`SplitPoints` (CUDA)."""

"""Configuration of Tango (spec section 2): the algorithm's knobs and, apart, how it runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Tuple

SEGMENTERS: Tuple[str, ...] = ("holitom", "fastvid")
BACKENDS: Tuple[str, ...] = ("fast", "reference")

# Attention-sink positions of SigLIP, per model preset (spec section 2).
SINK_PRESETS = {
    "llava_onevision": (11, 12, 27, 28, 41, 169),
    "llava_video": (11, 26, 157),
    "qwen2_5_vl": (),
}


def paper_similarity_threshold(nominal_ratio: float) -> float:
    """The paper's segmentation threshold ``tau`` for a run at nominal retention ratio r:
    0.65 at r = 0.1, else 0.8."""
    return 0.65 if nominal_ratio == 0.1 else 0.8


@dataclass(frozen=True)
class ExecutionOptions:
    """How ``tango_prune`` runs, never what it computes.

    backend: ``"fast"`` (the pipeline of this package) or ``"reference"``
    (:func:`tango_core.reference.reference_prune`, the readable oracle; slow).
    cuda_graphs: replay the fast pipeline's device stages as CUDA graphs (CUDA inputs only).
    fused_kernels: run its memory-bound parts as Triton kernels (CUDA, Triton installed).
    graph_cache_videos / graph_cache_layouts: video shapes kept by the graph cache, and
    selection-stage graphs kept per shape (least recently used dropped first).
    graph_capture_after: how many times a layout is seen before its graph is captured.
    """

    backend: str = "fast"
    cuda_graphs: bool = True
    fused_kernels: bool = True
    graph_cache_videos: int = 4
    graph_cache_layouts: int = 64
    graph_capture_after: int = 2

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}.")
        for name in ("graph_cache_videos", "graph_cache_layouts", "graph_capture_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


@dataclass(frozen=True)
class TangoConfig:
    """Every knob of the Tango pre-LLM pipeline, with the paper's defaults; ``execution`` says
    how it runs (:class:`ExecutionOptions`).

    ``retention_ratio``: target fraction of visual tokens kept, in (0, 1]; ``1.0`` returns every
    token unchanged (the reference would still collapse static tokens; we do not).
    ``similarity_threshold=None``: :func:`paper_similarity_threshold` of the retention ratio.
    ``exact_budget=True``: spend exactly ``round(r * N * L)`` tokens (spec section 8).
    ``own_anchor_merge=True``: write each merged context feature at its own anchor; the default
    reproduces the reference's pairing (spec 4.5).
    """

    retention_ratio: float = 0.1
    segmenter: str = "holitom"
    similarity_threshold: Optional[float] = None
    static_threshold: float = 0.8
    context_ratio: float = 0.4
    num_neighbors: int = 7
    alpha: float = 1.5
    beta: float = 0.6
    base_time: float = 10000.0
    base_space: float = 1000.0
    rope_sections: Optional[Tuple[int, int, int]] = None
    sink_positions: Tuple[int, ...] = field(default_factory=tuple)
    fastvid_cuts: int = 8
    exact_budget: bool = False
    own_anchor_merge: bool = False
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)

    def __post_init__(self) -> None:
        r = self.retention_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0.0 < float(r) <= 1.0) or math.isnan(r):
            raise ValueError(
                f"retention_ratio must be a number in (0, 1], got {r!r}; "
                "e.g. 0.1 keeps 10% of the visual tokens, 1.0 disables pruning."
            )
        if not (0.0 <= float(self.context_ratio) <= 1.0):
            raise ValueError(
                f"context_ratio must be in [0, 1], got {self.context_ratio!r}; it is the share of "
                "each frame's budget spent on merged context tokens (default 0.4)."
            )
        if self.segmenter not in SEGMENTERS:
            raise ValueError(
                f"segmenter must be one of {SEGMENTERS}, got {self.segmenter!r}."
            )
        if self.similarity_threshold is not None and not (-1.0 <= float(self.similarity_threshold) <= 1.0):
            raise ValueError(
                f"similarity_threshold must be a cosine similarity in [-1, 1] or None, got {self.similarity_threshold!r}."
            )
        if not (-1.0 <= float(self.static_threshold) <= 1.0):
            raise ValueError(
                f"static_threshold must be a cosine similarity in [-1, 1], got {self.static_threshold!r}."
            )
        if int(self.num_neighbors) < 1:
            raise ValueError(f"num_neighbors must be >= 1, got {self.num_neighbors!r}.")
        if not (float(self.alpha) >= 1.0):
            raise ValueError(f"alpha (salient candidate expansion) must be >= 1, got {self.alpha!r}.")
        if not (0.0 <= float(self.beta) <= 1.0):
            raise ValueError(f"beta (anchor weight floor) must be in [0, 1], got {self.beta!r}.")
        if not (float(self.base_time) > 0 and float(self.base_space) > 0):
            raise ValueError(
                f"base_time and base_space must be positive, got {self.base_time!r}, {self.base_space!r}."
            )
        if int(self.fastvid_cuts) < 1:
            raise ValueError(f"fastvid_cuts must be >= 1, got {self.fastvid_cuts!r}.")
        if self.rope_sections is not None:
            sections = tuple(int(s) for s in self.rope_sections)
            if len(sections) != 3 or any(s < 0 or s % 2 for s in sections):
                raise ValueError(
                    f"rope_sections must be three non-negative even channel counts (time, height, width), "
                    f"got {self.rope_sections!r}."
                )
            object.__setattr__(self, "rope_sections", sections)
        object.__setattr__(self, "sink_positions", tuple(int(p) for p in self.sink_positions))
        if not isinstance(self.execution, ExecutionOptions):
            raise ValueError(f"execution must be an ExecutionOptions, got {type(self.execution).__name__}.")

    def resolved_similarity_threshold(self) -> float:
        """Segmentation threshold ``tau``: the explicit value, else the paper's rule."""
        if self.similarity_threshold is not None:
            return float(self.similarity_threshold)
        return paper_similarity_threshold(self.retention_ratio)

    def with_execution(self, **changes) -> "TangoConfig":
        """This configuration with some :class:`ExecutionOptions` changed."""
        return replace(self, execution=replace(self.execution, **changes))


def default_rope_sections(dim: int) -> Tuple[int, int, int]:
    """``(D - 2s, s, s)`` with ``s = 2 * (D // 6)``: channels for time, height, width."""
    s = 2 * (dim // 6)
    return (dim - 2 * s, s, s)


def resolve_rope_sections(dim: int, sections: Optional[Sequence[int]]) -> Tuple[int, int, int]:
    """Validate rope sections against the feature dimension ``dim``."""
    resolved = default_rope_sections(dim) if sections is None else tuple(int(s) for s in sections)
    if len(resolved) != 3 or sum(resolved) != dim or any(s < 0 or s % 2 for s in resolved):
        raise ValueError(
            f"rope_sections {tuple(resolved)} must be three non-negative even numbers summing to the "
            f"feature dimension D = {dim}; pass rope_sections=(d_t, d_h, d_w) explicitly"
            + (" (the default (D - 2s, s, s) is odd for odd D)." if sections is None else ".")
        )
    return resolved  # type: ignore[return-value]

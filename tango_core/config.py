"""The one configuration object of Tango (spec section 2)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence, Tuple

Segmenter = Literal["holitom", "fastvid"]
SEGMENTERS: Tuple[str, ...] = ("holitom", "fastvid")

# Attention-sink positions of SigLIP, per model preset (spec section 2).
SINK_PRESETS = {
    "llava_onevision": (11, 12, 27, 28, 41, 169),
    "llava_video": (11, 26, 157),
    "qwen2_5_vl": (),
}


@dataclass(frozen=True)
class TangoConfig:
    """Every knob of the Tango pre-LLM pipeline, with the paper's defaults.

    ``retention_ratio`` is the target fraction of visual tokens kept, in (0, 1]. ``1.0`` means
    "no pruning": every token is returned unchanged (the reference would still collapse static
    tokens at 1.0; we do not).

    ``similarity_threshold=None`` resolves to 0.65 when ``retention_ratio == 0.1`` and 0.8
    otherwise (the paper's runs); use :meth:`resolved_similarity_threshold`.

    ``exact_budget=True`` spends exactly ``round(r * N * L)`` tokens (spec section 8) instead of
    reproducing the reference's budget arithmetic.

    ``own_anchor_merge=True`` writes each merged context feature at its own anchor; the default
    ``False`` reproduces the reference's pairing of merged features with anchors (spec 4.5).

    ``cuda_graphs=True`` (execution only) replays the device stages of CUDA inputs as CUDA graphs
    (:mod:`tango_core.graphs`): same results, far fewer kernel launches, some GPU memory held by
    the graphs. ``False`` runs them eagerly. No effect on CPU.

    ``fused_kernels=True`` (execution only) runs the memory-bound parts of the CUDA path as fused
    Triton kernels (:mod:`tango_core.kernels`) when Triton is installed; ``False`` uses PyTorch
    operations only. The two agree to float32 rounding. No effect on CPU.
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
    cuda_graphs: bool = True
    fused_kernels: bool = True

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

    def resolved_similarity_threshold(self) -> float:
        """Segmentation threshold ``tau``: explicit value, else 0.65 at r = 0.1 and 0.8 otherwise."""
        if self.similarity_threshold is not None:
            return float(self.similarity_threshold)
        return 0.65 if self.retention_ratio == 0.1 else 0.8



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

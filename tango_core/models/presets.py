"""The paper's run settings per model family (spec section 7) as ready-made configurations."""

from __future__ import annotations

from ..config import SINK_PRESETS, TangoConfig
from .llava import pre_llm_ratio

PAPER_FRAMES = {"llava_onevision": 32, "llava_video": 64, "qwen2_5_vl": None}  # None: 2 fps, at most 128


def paper_config(family: str, ratio: float, use_sink_preset: bool = False) -> TangoConfig:
    """TangoConfig of the paper's run of ``family`` at nominal retention ``ratio`` (0.1, 0.15, 0.2).

    The segmentation threshold follows the nominal ratio (0.65 at 0.1, else 0.8). LLaVA-Video's
    pre-LLM ratio is raised so that, with its intra-LLM stage (K = 18, p = 0.5), the average over
    the 28 layers is ``ratio``, rounded to six significant digits as the reference's scripts pass
    it (0.121739 for 0.1). Sink positions are off, as in the spec's defaults; ``use_sink_preset``
    turns on the family's SigLIP attention-sink preset.
    """
    if family not in PAPER_FRAMES:
        raise ValueError(f"Unknown model family {family!r}; choose one of {sorted(PAPER_FRAMES)}.")
    threshold = 0.65 if ratio == 0.1 else 0.8
    retention = float(f"{pre_llm_ratio(ratio):.6g}") if family == "llava_video" else ratio
    sinks = SINK_PRESETS[family] if use_sink_preset else ()
    return TangoConfig(retention_ratio=retention, similarity_threshold=threshold, sink_positions=sinks)

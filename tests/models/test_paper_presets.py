"""paper_config per family, with the spec's numbers written out (sections 6 and 7)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from tango_core.models.presets import PAPER_FRAMES, paper_config

# Spec 7: nominal r -> segmentation threshold tau; spec 6: LLaVA-Video's pre-LLM ratio as the
# reference's scripts pass it, 28 r / (18 + 10 * 0.5) to six significant digits.
PAPER_RUNS = [(0.1, 0.65, 0.121739), (0.15, 0.8, 0.182609), (0.2, 0.8, 0.243478)]


@pytest.mark.parametrize("ratio, tau, video_ratio", PAPER_RUNS)
def test_paper_config_ratios_and_thresholds(ratio: float, tau: float, video_ratio: float) -> None:
    """Planted bug caught: paper_config("qwen2_5_vl", r) not keeping r."""
    for family, expected in (("llava_onevision", ratio), ("qwen2_5_vl", ratio), ("llava_video", video_ratio)):
        config = paper_config(family, ratio)
        assert config.retention_ratio == expected, family
        assert config.resolved_similarity_threshold() == tau, family
        assert config.segmenter == "holitom" and config.context_ratio == 0.4 and config.num_neighbors == 7
    assert abs(28 * ratio / (18 + 10 * 0.5) - video_ratio) < 5e-7


def test_paper_frame_counts() -> None:
    assert PAPER_FRAMES == {"llava_onevision": 32, "llava_video": 64, "qwen2_5_vl": None}

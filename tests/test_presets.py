"""The paper's settings per family (spec sections 6 and 7)."""

import pytest

from tango_core import SINK_PRESETS, TangoConfig
from tango_core.config import paper_similarity_threshold
from tango_core.models.presets import paper_config


@pytest.mark.parametrize("ratio,pre_llm,tau", [(0.1, 0.121739, 0.65), (0.15, 0.182609, 0.8), (0.2, 0.243478, 0.8)])
def test_llava_video_pre_llm_ratio_and_threshold(ratio, pre_llm, tau):
    config = paper_config("llava_video", ratio)
    assert config.retention_ratio == pre_llm
    assert config.resolved_similarity_threshold() == tau


def test_other_families_use_the_nominal_ratio_and_optional_sinks():
    assert paper_config("llava_onevision", 0.15).retention_ratio == 0.15
    assert paper_config("llava_onevision", 0.1).sink_positions == ()
    assert paper_config("llava_onevision", 0.1, use_sink_preset=True).sink_positions == SINK_PRESETS["llava_onevision"]
    with pytest.raises(ValueError, match="Unknown model family"):
        paper_config("llava_next", 0.1)


def test_the_threshold_rule_is_the_configs():
    assert paper_similarity_threshold(0.1) == 0.65 and paper_similarity_threshold(0.15) == 0.8
    for ratio in (0.1, 0.15, 0.2):
        assert TangoConfig(ratio).resolved_similarity_threshold() == paper_similarity_threshold(ratio)
        assert paper_config("qwen2_5_vl", ratio).similarity_threshold == paper_similarity_threshold(ratio)
    assert TangoConfig(0.1, similarity_threshold=0.3).resolved_similarity_threshold() == 0.3

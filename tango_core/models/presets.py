"""The paper's run settings per model family (spec section 7) as ready-made configurations."""

from __future__ import annotations

from ..config import TangoConfig
from .families import FAMILIES, get_family

# Frames per video of the paper's runs (None: 2 fps, at most 128).
PAPER_FRAMES = {name: family.frames for name, family in FAMILIES.items()}


def paper_config(family: str, ratio: float, use_sink_preset: bool = False) -> TangoConfig:
    """TangoConfig of the paper's run of ``family`` at nominal retention ``ratio`` (0.1, 0.15, 0.2).

    See :meth:`~tango_core.models.families.Family.paper_config`: tau follows the nominal ratio;
    LLaVA-Video's pre-LLM ratio makes the 28-layer average ``ratio`` (0.121739 for 0.1); sinks
    are off unless ``use_sink_preset``.
    """
    return get_family(family).paper_config(ratio, use_sink_preset)

"""Tango: training-free visual token pruning for video LLMs (Yin et al., 2026)."""

from .config import SINK_PRESETS, TangoConfig
from .graphs import clear_cuda_graphs
from .intra_llm import IntraLLMResult, merge_and_prune_visual
from .prune import TangoResult, tango_prune
from .rope import st_rope

__all__ = [
    "SINK_PRESETS",
    "TangoConfig",
    "TangoResult",
    "tango_prune",
    "clear_cuda_graphs",
    "st_rope",
    "IntraLLMResult",
    "merge_and_prune_visual",
]
__version__ = "0.1.0"

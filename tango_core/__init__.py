"""Tango: training-free visual token pruning for video LLMs (Yin et al., 2026)."""

from .config import SINK_PRESETS, ExecutionOptions, TangoConfig
from .graphs import clear_cuda_graphs, graph_cache
from .intra_llm import IntraLLMResult, merge_and_prune_visual
from .prune import tango_prune
from .rope import st_rope
from .types import TangoResult

__all__ = [
    "SINK_PRESETS",
    "TangoConfig",
    "ExecutionOptions",
    "TangoResult",
    "tango_prune",
    "graph_cache",
    "clear_cuda_graphs",
    "st_rope",
    "IntraLLMResult",
    "merge_and_prune_visual",
]
__version__ = "0.1.0"

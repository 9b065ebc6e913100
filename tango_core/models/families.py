"""The model families Tango has adapters for: one registry that the loader, the presets and the
evaluation harness read.

A family is an adapter class (a :class:`~tango_core.models.base.TangoVideoLM` subclass, imported
only when used) plus the facts of the paper's runs of it (spec section 7). A new family is one
file: its adapter, ending with ``register_family(Family(...))``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ..config import SINK_PRESETS, TangoConfig, paper_similarity_threshold
from ..intra_llm import IntraLLMConfig


@dataclass(frozen=True)
class Family:
    """One model family.

    name: the family id. title: its name in tables. adapter: ``"module:Class"`` of the adapter.
    model_type: ``model_type`` in the checkpoint's config.json (several families may share one).
    hub_id: the paper's checkpoint. frames / fps: the paper's frame setting (exactly one is set).
    cuda_dtype: the paper's dtype on GPUs. sink_preset: SigLIP attention-sink positions.
    intra_llm: the intra-LLM stage of its paper runs (None: none).
    """

    name: str
    title: str
    adapter: str
    model_type: str
    hub_id: str
    frames: Optional[int]
    fps: Optional[float]
    cuda_dtype: str
    sink_preset: Tuple[int, ...] = ()
    intra_llm: Optional[IntraLLMConfig] = None

    def adapter_class(self) -> type:
        """The adapter class (imported on first use)."""
        module, _, name = self.adapter.partition(":")
        return getattr(importlib.import_module(module), name)

    def paper_config(self, ratio: float, use_sink_preset: bool = False, num_layers: int = 28) -> TangoConfig:
        """TangoConfig of the paper's run at nominal retention ``ratio`` (0.1, 0.15, 0.2).

        tau follows the nominal ratio. With an intra-LLM stage, the pre-LLM ratio is raised so that
        the average over the ``num_layers`` layers is ``ratio``, rounded to six significant digits
        as the reference's scripts pass it (0.121739 for 0.1 on 28 layers). Sinks are off unless
        ``use_sink_preset``.
        """
        retention = float(ratio)
        if self.intra_llm is not None:
            retention = float(f"{self.intra_llm.pre_llm_ratio(retention, num_layers):.6g}")
        return TangoConfig(
            retention_ratio=retention,
            similarity_threshold=paper_similarity_threshold(ratio),
            sink_positions=self.sink_preset if use_sink_preset else (),
        )


FAMILIES: Dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add (or replace) a family; returns it."""
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    """The family called ``name``; a clear error for unknown names."""
    if name not in FAMILIES:
        raise ValueError(f"Unknown model family {name!r}; choose one of {sorted(FAMILIES)}.")
    return FAMILIES[name]


def families_of_model_type(model_type: str) -> Tuple[str, ...]:
    """Names of the families whose checkpoints have this ``model_type`` (registration order)."""
    return tuple(f.name for f in FAMILIES.values() if f.model_type == model_type)


register_family(Family(
    "llava_onevision", "LLaVA-OneVision-7B", "tango_core.models.llava:LlavaTango", "llava_onevision",
    "llava-hf/llava-onevision-qwen2-7b-ov-hf", frames=32, fps=None, cuda_dtype="float16",
    sink_preset=SINK_PRESETS["llava_onevision"],
))
register_family(Family(
    "llava_video", "LLaVA-Video-7B", "tango_core.models.llava:LlavaTango", "llava_onevision",
    "llava-hf/LLaVA-Video-7B-Qwen2-hf", frames=64, fps=None, cuda_dtype="float16",
    sink_preset=SINK_PRESETS["llava_video"], intra_llm=IntraLLMConfig(),
))
register_family(Family(
    "qwen2_5_vl", "Qwen2.5-VL-7B", "tango_core.models.qwen2_5_vl:Qwen25VLTango", "qwen2_5_vl",
    "Qwen/Qwen2.5-VL-7B-Instruct", frames=None, fps=2.0, cuda_dtype="bfloat16",
    sink_preset=SINK_PRESETS["qwen2_5_vl"],
))

"""lmms-eval's entry point: one manifest per family and method (imports nothing heavy)."""

from __future__ import annotations

from typing import List

FAMILIES = ("llava_onevision", "llava_video", "qwen2_5_vl")


def manifests() -> List[object]:
    """``ModelManifest`` s of ``tango_<family>`` and ``vanilla_<family>`` (lmms-eval calls this)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    out = []
    for family in FAMILIES:
        for method in ("tango", "vanilla"):
            out.append(ModelManifest(model_id=f"{method}_{family}", simple_class_path=f"tango_lmms.models.{method.title()}_{family}"))
    return out

"""One entry point that loads any supported checkpoint as a :class:`TangoVideoLM`."""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple, Union

import torch

from ..config import TangoConfig
from .base import TangoVideoLM

# model_type in config.json -> families it can be.
SUPPORTED_ARCHITECTURES: Dict[str, Tuple[str, ...]] = {
    "llava_onevision": ("llava_onevision", "llava_video"),
    "qwen2_5_vl": ("qwen2_5_vl",),
}
FAMILIES: Tuple[str, ...] = ("llava_onevision", "llava_video", "qwen2_5_vl")


def read_model_type(path: str) -> Tuple[str, object]:
    """(model_type, config) of the checkpoint at ``path`` (a directory or a hub id).

    Local directories are read as plain JSON first so that unknown architectures get our message
    rather than transformers' own.
    """
    config_file = os.path.join(path, "config.json")
    if os.path.isdir(path):
        if not os.path.isfile(config_file):
            raise ValueError(f"{path!r} has no config.json; pass the directory of a transformers checkpoint.")
        with open(config_file) as handle:
            raw = json.load(handle)
        model_type = str(raw.get("model_type", ""))
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise ValueError(_unsupported(model_type, raw.get("architectures")))
    elif os.path.exists(path):
        raise ValueError(f"{path!r} is a file; pass the checkpoint directory (holding config.json) or a hub id.")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    model_type = str(getattr(config, "model_type", ""))
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(_unsupported(model_type, getattr(config, "architectures", None)))
    return model_type, config


def _unsupported(model_type: str, architectures: object) -> str:
    """Message for an architecture Tango has no adapter for."""
    supported = ", ".join(f"{k} ({'/'.join(v)})" for k, v in SUPPORTED_ARCHITECTURES.items())
    return (
        f"Unsupported architecture: model_type={model_type!r} (architectures={architectures!r}). "
        f"Tango supports model types {supported}: LLaVA-OneVision and LLaVA-Video in the llava-hf "
        "format (LlavaOnevisionForConditionalGeneration) and Qwen2.5-VL."
    )


def load_tango_model(
    path: str,
    tango: Optional[TangoConfig] = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[Union[str, torch.device]] = None,
    attn_implementation: Optional[str] = None,
    family: Optional[str] = None,
    siglip_path: Optional[str] = None,
    **kwargs,
) -> TangoVideoLM:
    """Load the checkpoint at ``path`` with Tango attached (``tango=None``: unmodified model).

    The family comes from the config: model_type ``qwen2_5_vl`` -> Qwen2.5-VL; ``llava_onevision``
    -> LLaVA-Video when ``family="llava_video"``, the config's ``tango_family`` key or the path says
    so, else LLaVA-OneVision. ``siglip_path`` (LLaVA only): checkpoint of SigLIP's attention-pooling
    head. Extra keyword arguments go to the family's adapter (e.g. ``num_frames``).
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; choose one of {FAMILIES}.")
    model_type, config = read_model_type(path)
    if family is not None and family not in SUPPORTED_ARCHITECTURES[model_type]:
        raise ValueError(
            f"family={family!r} does not match the checkpoint's model_type {model_type!r} "
            f"(which can be {SUPPORTED_ARCHITECTURES[model_type]})."
        )
    if model_type == "qwen2_5_vl":
        if siglip_path is not None:
            raise ValueError("siglip_path applies to the LLaVA families only; Qwen2.5-VL takes saliency from its own ViT.")
        from .qwen2_5_vl import Qwen25VLTango

        return Qwen25VLTango.from_pretrained(
            path, tango=tango, dtype=dtype, device=device, attn_implementation=attn_implementation, **kwargs
        )
    from .llava import LlavaTango, detect_llava_family

    return LlavaTango.from_pretrained(
        path,
        tango=tango,
        family=family or detect_llava_family(config, path),
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        siglip_path=siglip_path,
        config=config,
        **kwargs,
    )

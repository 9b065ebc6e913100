"""One entry point that loads any supported checkpoint as a :class:`TangoVideoLM`."""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple, Union

import torch

from ..config import TangoConfig
from .base import TangoVideoLM
from .families import FAMILIES, families_of_model_type, get_family


def supported_architectures() -> Dict[str, Tuple[str, ...]]:
    """model_type in config.json -> the families it can be."""
    types: Dict[str, Tuple[str, ...]] = {}
    for family in FAMILIES.values():
        types[family.model_type] = types.get(family.model_type, ()) + (family.name,)
    return types


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
        if not families_of_model_type(model_type):
            raise ValueError(_unsupported(model_type, raw.get("architectures")))
    elif os.path.exists(path):
        raise ValueError(f"{path!r} is a file; pass the checkpoint directory (holding config.json) or a hub id.")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    model_type = str(getattr(config, "model_type", ""))
    if not families_of_model_type(model_type):
        raise ValueError(_unsupported(model_type, getattr(config, "architectures", None)))
    return model_type, config


def _unsupported(model_type: str, architectures: object) -> str:
    """Message for an architecture Tango has no adapter for."""
    supported = ", ".join(f"{k} ({'/'.join(v)})" for k, v in supported_architectures().items())
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
    **kwargs,
) -> TangoVideoLM:
    """Load the checkpoint at ``path`` with Tango attached (``tango=None``: unmodified model).

    The family comes from the config's model_type (:mod:`~tango_core.models.families`); where
    several families share one (LLaVA-OneVision and LLaVA-Video), ``family`` or the adapter's own
    detection decides (the config's ``tango_family`` key, else the path). Extra keyword arguments
    go to the family's adapter (``num_frames``, ``siglip_path``, ``intra_llm``, ...).
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; choose one of {tuple(FAMILIES)}.")
    model_type, config = read_model_type(path)
    candidates = families_of_model_type(model_type)
    if family is not None and family not in candidates:
        raise ValueError(
            f"family={family!r} does not match the checkpoint's model_type {model_type!r} (which can be {candidates})."
        )
    adapter = get_family(family or candidates[0]).adapter_class()
    if len(candidates) > 1:  # the checkpoint alone does not say which family: tell the adapter
        kwargs.update(family=family or adapter.detect_family(config, path), config=config)
    return adapter.from_pretrained(path, tango=tango, dtype=dtype, device=device, attn_implementation=attn_implementation, **kwargs)

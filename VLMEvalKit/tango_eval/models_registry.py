"""The model families the harness evaluates: tango_core's family registry plus the harness's
own names (VLMEvalKit class, aliases). Cheap to import: no VLMEvalKit, no model code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from tango_core.models.families import get_family


@dataclass(frozen=True)
class ModelSpec:
    """One model family as the harness runs it.

    name: the harness's model name (also VLMEvalKit's model name in file names). family: the
    tango_core adapter family. hub_id: the default checkpoint. vlm_class: the class registered into
    ``vlmeval.vlm``. nframe / fps: the paper's frame setting (exactly one is set). cuda_dtype: the
    paper's dtype on GPUs (float32 on CPU). model_type: ``model_type`` of the checkpoint's config.
    """

    name: str
    family: str
    hub_id: str
    vlm_class: str
    nframe: Optional[int]
    fps: Optional[float]
    cuda_dtype: str
    model_type: str
    title: str
    aliases: Tuple[str, ...] = ()


def _spec(family: str, vlm_class: str, aliases: Tuple[str, ...]) -> ModelSpec:
    known = get_family(family)
    return ModelSpec(family, family, known.hub_id, vlm_class, known.frames, known.fps, known.cuda_dtype,
                     known.model_type, known.title, aliases)


MODELS: Dict[str, ModelSpec] = {
    "llava_onevision": _spec("llava_onevision", "TangoLlavaOneVision",
                             ("llava-onevision", "llava-onevision-qwen2-7b-ov-hf", "llava_onevision_qwen2_7b_ov", "ov")),
    "llava_video": _spec("llava_video", "TangoLlavaVideo", ("llava-video", "LLaVA-Video-7B-Qwen2", "llava_video_7b_qwen2", "video")),
    "qwen2_5_vl": _spec("qwen2_5_vl", "TangoQwen25VL", ("qwen2.5-vl", "Qwen2.5-VL-7B-Instruct", "qwen2_5_vl_7b", "qwen")),
}

_ALIASES: Dict[str, str] = {}
for _spec in MODELS.values():
    for _alias in (_spec.name, _spec.title, _spec.vlm_class, *_spec.aliases):
        _ALIASES[_alias.lower().replace("-", "_").replace(".", "_")] = _spec.name


class UnknownModel(ValueError):
    """A model name that is none of the three families."""


def resolve_model(name: str) -> ModelSpec:
    """The family for a harness name (``llava_onevision``) or an alias (``LLaVA-Video-7B-Qwen2``)."""
    key = str(name).lower().replace("-", "_").replace(".", "_")
    if key not in _ALIASES:
        raise UnknownModel(
            f"Unknown model {name!r}: choose one of {', '.join(MODELS)} "
            "(LLaVA-OneVision, LLaVA-Video, Qwen2.5-VL in the transformers format)."
        )
    return MODELS[_ALIASES[key]]


def spec_of_class(vlm_class: str) -> Optional[ModelSpec]:
    """The family whose registered VLMEvalKit class is ``vlm_class`` (None for other classes)."""
    for spec in MODELS.values():
        if spec.vlm_class == vlm_class:
            return spec
    return None


def check_checkpoint(path: str, spec: ModelSpec, local_only: bool = True) -> Optional[str]:
    """Why ``path`` cannot be this family's checkpoint (None when it looks right).

    Local folders are read as plain JSON. With ``local_only=False`` a name of the form ``org/name``
    that is not a local path is taken as a hub id and left to ``from_pretrained``.
    """
    expanded = os.path.expanduser(path)
    if not local_only and not os.path.exists(expanded) and not os.path.isabs(expanded) and expanded.count("/") == 1:
        return None
    if not os.path.exists(expanded):
        return f"checkpoint folder {path!r} does not exist; pass the folder of a transformers checkpoint (holding config.json)."
    if not os.path.isdir(expanded):
        return f"checkpoint path {path!r} is a file; pass the checkpoint folder that holds config.json."
    config_file = os.path.join(expanded, "config.json")
    if not os.path.isfile(config_file):
        return f"checkpoint folder {path!r} has no config.json; pass the folder of a transformers checkpoint."
    try:
        with open(config_file) as handle:
            model_type = str(json.load(handle).get("model_type", ""))
    except (OSError, ValueError) as error:
        return f"{config_file} cannot be read as JSON ({error}); the checkpoint looks damaged."
    if model_type != spec.model_type:
        return (
            f"checkpoint {path!r} holds a {model_type or 'unknown'!r} model, but {spec.name} needs "
            f"model_type {spec.model_type!r} ({spec.title} in the transformers format)."
        )
    return None


"""From evaluation settings to a loaded adapter, the same for every harness (VLMEvalKit, lmms-eval).

No VLMEvalKit import here: the lmms-eval plugin uses it too.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from tango_core import TangoConfig
from tango_core.models.base import TangoVideoLM, VideoClip
from tango_core.models.loader import load_tango_model
from tango_core.models.video import sample_fps, sample_uniform

from .settings import ModelSettings


def resolve_device(requested: Optional[str]) -> torch.device:
    """The requested device, else the current process's GPU, else CPU."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_dtype(settings: ModelSettings, device: torch.device) -> torch.dtype:
    """The requested dtype, else the paper's on CUDA (fp16 LLaVA, bf16 Qwen), else float32."""
    if settings.dtype:
        return getattr(torch, settings.dtype)
    return getattr(torch, settings.spec.cuda_dtype) if device.type == "cuda" else torch.float32


def tango_config(settings: ModelSettings, retention: float) -> TangoConfig:
    """Tango's configuration at pre-LLM retention ``retention``, tau keyed on the nominal ratio."""
    return TangoConfig(
        retention_ratio=retention,
        segmenter=settings.segment_type,
        similarity_threshold=settings.resolved_similarity_threshold(),
        context_ratio=settings.context_ratio,
        num_neighbors=int(settings.num_neighbors),
    )


def adapter_options(settings: ModelSettings) -> Dict[str, Any]:
    """Family-specific keyword arguments of ``load_tango_model``."""
    family = settings.spec.family
    options: Dict[str, Any] = {}
    if settings.decoding:
        options["decoding"] = settings.decoding
    if family in ("llava_onevision", "llava_video"):
        options["num_frames"] = int(settings.nframe) if settings.nframe else None
        if settings.siglip_path:
            options["siglip_path"] = settings.siglip_path
    if family == "llava_video":
        options["intra_llm"] = settings.intra_llm_config()
    return options


def load_adapter(settings: ModelSettings, device: Optional[torch.device] = None) -> TangoVideoLM:
    """The family's adapter with Tango configured as ``settings`` say (vanilla: ``tango=None``).

    LLaVA-Video's pre-LLM ratio comes from r, K and p on the loaded model's depth (spec section 6).
    """
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one bar per weight file is noise in an evaluation log
    device = device or resolve_device(settings.device)
    adapter = load_tango_model(
        settings.model_path,
        tango=None,
        dtype=resolve_dtype(settings, device),
        device=device,
        attn_implementation=settings.attn_implementation,
        family=settings.spec.family,
        **adapter_options(settings),
    )
    if settings.prunes:
        retention = float(settings.retain_ratio)
        if settings.spec.family == "llava_video":
            retention = settings.resolved_pre_retain_ratio(adapter.num_layers)
        adapter.tango = tango_config(settings, retention)
    return adapter


def sample_clip(adapter: TangoVideoLM, path: str, nframe: Optional[int], fps: Optional[float]) -> VideoClip:
    """The frames ``adapter`` reads from ``path``: ``nframe`` frames, else about ``fps`` per second
    (Qwen2.5-VL: its own rule, the dataset's count or rate overriding it). Thread-safe."""
    if adapter.family == "qwen2_5_vl":
        if fps:
            adapter.fps = float(fps)
        clip = adapter.load_clip(path, int(nframe) if nframe else None)
    elif nframe:
        clip = sample_uniform(path, int(nframe))
    else:
        clip = sample_fps(path, float(fps))
    clip.source = path
    return clip


def fit_adapter_to(adapter: TangoVideoLM, clip: VideoClip) -> None:
    """Make the adapter take ``clip`` as it is (LLaVA resamples clips of another length)."""
    if adapter.family != "qwen2_5_vl":
        adapter.num_frames = int(clip.frames.shape[0])

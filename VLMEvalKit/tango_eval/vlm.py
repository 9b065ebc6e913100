"""Tango's models as VLMEvalKit models: ``BaseModel`` classes around ``load_tango_model``.

One class per family (``TangoLlavaOneVision``, ``TangoLlavaVideo``, ``TangoQwen25VL``), each
running Tango or, with ``method="vanilla"``, the unmodified model. :func:`register_models` puts
them into ``vlmeval.vlm`` (where ``--config`` entries look classes up) and
``vlmeval.config.supported_VLM`` (where model names are looked up), without editing VLMEvalKit.

Prompts follow the reference (spec section 7): the message's text parts are concatenated in order,
roles ignored, and the video goes first; the family adapter applies its chat template (LLaVA's
``qwen_1_5`` with ``<image>`` first, LLaVA-Video's time instruction, Qwen2.5-VL's default system
prompt). Decoding is greedy with a short answer budget.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional, Tuple

import torch

from .records import EMPTY_ANSWER
from .settings import ModelSettings
from .vlmeval_env import import_vlmeval

import_vlmeval()

from vlmeval.vlm.base import BaseModel  # noqa: E402

from tango_core import TangoConfig  # noqa: E402
from tango_core.models.base import TangoGeneration, TangoVideoLM  # noqa: E402
from tango_core.models.loader import load_tango_model  # noqa: E402
from tango_core.models.base import VideoClip  # noqa: E402
from tango_core.models.video import sample_fps, sample_uniform  # noqa: E402



def printable(text: str) -> str:
    """``text`` without control characters (random-weight models emit them; spreadsheets reject them)."""
    return "".join(ch for ch in text if ch.isprintable() or ch in "\n\t")


def video_and_text(message: List[Dict[str, Any]]) -> Tuple[str, str]:
    """(video path, concatenated text) of a VLMEvalKit message; roles are ignored."""
    videos = [item["value"] for item in message if item["type"] == "video"]
    images = [item for item in message if item["type"] == "image"]
    if images or len(videos) != 1:
        raise ValueError(
            f"Tango's models answer about one video per question; this message has {len(videos)} videos and "
            f"{len(images)} images (VLMEvalKit gives frames as images when a model is not a video LLM)."
        )
    text = "".join(str(item["value"]) for item in message if item["type"] == "text")
    return str(videos[0]), text


def with_source(clip: VideoClip, path: str) -> VideoClip:
    """``clip`` labelled with the file it was decoded from."""
    clip.source = path
    return clip


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


class TangoVideoModel(BaseModel):
    """A Tango-pruned (or vanilla) video LLM answering VLMEvalKit's video benchmarks.

    Keyword arguments are the fields of :class:`~tango_eval.settings.ModelSettings` (``model`` is
    the class's family). ``nframe`` / ``fps`` are VLMEvalKit's attributes: a dataset that sets its
    own frame count or rate overwrites them before each sample. After each answer,
    ``last_generation`` holds the adapter's :class:`TangoGeneration` (token counts, stage times).
    """

    INSTALL_REQ = False
    INTERLEAVE = False
    VIDEO_LLM = True
    MODEL = ""

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = ModelSettings(model=self.MODEL, **settings)
        self.nframe: Optional[int] = self.settings.nframe
        self.fps: Optional[float] = self.settings.fps
        self.device = resolve_device(self.settings.device)
        self.dtype = resolve_dtype(self.settings, self.device)
        self.adapter: TangoVideoLM = self._load()
        self.last_generation: Optional[TangoGeneration] = None

    # -- loading -------------------------------------------------------------------------------

    def _adapter_options(self) -> Dict[str, Any]:
        """Family-specific keyword arguments of ``load_tango_model``."""
        return {}

    def _tango_config(self, retention: float) -> TangoConfig:
        """Tango's configuration at pre-LLM retention ``retention``, tau keyed on the nominal ratio."""
        s = self.settings
        return TangoConfig(
            retention_ratio=retention,
            segmenter=s.segment_type,
            similarity_threshold=s.resolved_similarity_threshold(),
            context_ratio=s.context_ratio,
            num_neighbors=int(s.num_neighbors),
        )

    def pre_llm_retention(self) -> float:
        """The ratio Tango prunes to before the LLM (the nominal r, except LLaVA-Video)."""
        return float(self.settings.retain_ratio)

    def _load(self) -> TangoVideoLM:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # one bar per weight file is noise in an evaluation log
        s = self.settings
        adapter = load_tango_model(
            s.model_path,
            tango=None,
            dtype=self.dtype,
            device=self.device,
            attn_implementation=s.attn_implementation,
            family=s.spec.family,
            **self._adapter_options(),
        )
        self.adapter = adapter
        if s.prunes:
            adapter.tango = self._tango_config(self.pre_llm_retention())
        return adapter

    @property
    def tango_config(self) -> Optional[TangoConfig]:
        """Tango's configuration (None for the vanilla model)."""
        return self.adapter.tango

    # -- answering -----------------------------------------------------------------------------

    def load_clip(self, path: str) -> VideoClip:
        """Decode the frames the adapter samples from ``path`` under the current nframe / fps.

        Safe to call from a background thread (the runner decodes the next samples while the GPU
        answers the current one).
        """
        raise NotImplementedError

    def answer(self, message: List[Dict[str, Any]], dataset: Optional[str] = None, clip: Optional[VideoClip] = None) -> str:
        """``generate`` (VLMEvalKit's checks, then :meth:`generate_inner`) on already decoded frames."""
        self._clip = clip
        try:
            return self.generate(message=message, dataset=dataset)
        finally:
            self._clip = None

    def generate_inner(self, message: List[Dict[str, Any]], dataset: Optional[str] = None) -> str:
        """The greedy answer to one VLMEvalKit message (never empty)."""
        path, question = video_and_text(message)
        clip = getattr(self, "_clip", None)
        if clip is None or clip.source != path:
            clip = self.load_clip(path)
        self._fit_adapter_to(clip)
        generation = self.adapter.generate(clip, question, max_new_tokens=int(self.settings.max_new_tokens))
        self.last_generation = generation
        return printable(generation.text).strip() or EMPTY_ANSWER

    def _fit_adapter_to(self, clip: VideoClip) -> None:
        """Make the adapter take ``clip`` as it is (no resampling)."""


class _LlavaModel(TangoVideoModel):
    """The LLaVA families: a fixed frame count (or frames at a rate), SigLIP saliency."""

    def _adapter_options(self) -> Dict[str, Any]:
        options: Dict[str, Any] = {"num_frames": int(self.nframe) if self.nframe else None}
        if self.settings.siglip_path:
            options["siglip_path"] = self.settings.siglip_path
        return options

    def load_clip(self, path: str) -> VideoClip:
        if self.nframe:
            return with_source(sample_uniform(path, int(self.nframe)), path)
        return with_source(sample_fps(path, float(self.fps)), path)

    def _fit_adapter_to(self, clip: VideoClip) -> None:
        self.adapter.num_frames = int(clip.frames.shape[0])


class TangoLlavaOneVision(_LlavaModel):
    """LLaVA-OneVision-7B (32 frames, fp16) with Tango before the LLM."""

    MODEL = "llava_onevision"


class TangoLlavaVideo(_LlavaModel):
    """LLaVA-Video-7B (64 frames, fp16) with Tango before the LLM and its intra-LLM stage at layer K."""

    MODEL = "llava_video"

    def _adapter_options(self) -> Dict[str, Any]:
        options = super()._adapter_options()
        options["intra_llm"] = self.settings.intra_llm_config()
        return options

    def pre_llm_retention(self) -> float:
        return self.settings.resolved_pre_retain_ratio(self.adapter.num_layers)


class TangoQwen25VL(TangoVideoModel):
    """Qwen2.5-VL-7B (2 fps up to 128 frames, or the dataset's frame count; bf16) with Tango."""

    MODEL = "qwen2_5_vl"

    def load_clip(self, path: str) -> VideoClip:
        if self.fps:
            self.adapter.fps = float(self.fps)
        return with_source(self.adapter.load_clip(path, int(self.nframe) if self.nframe else None), path)


MODEL_CLASSES = {cls.__name__: cls for cls in (TangoLlavaOneVision, TangoLlavaVideo, TangoQwen25VL)}


def register_models() -> None:
    """Make the classes visible to VLMEvalKit: ``vlmeval.vlm.<Class>`` and ``supported_VLM[<name>]``."""
    import vlmeval.config
    import vlmeval.vlm

    for cls in MODEL_CLASSES.values():
        setattr(vlmeval.vlm, cls.__name__, cls)
        vlmeval.config.supported_VLM[cls.MODEL] = functools.partial(cls)

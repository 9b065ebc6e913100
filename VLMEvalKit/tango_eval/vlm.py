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

from .adapters import fit_adapter_to, load_adapter, resolve_device, sample_clip
from .records import EMPTY_ANSWER
from .settings import ModelSettings
from .vlmeval_env import import_vlmeval

import_vlmeval()

from vlmeval.vlm.base import BaseModel  # noqa: E402

from tango_core import TangoConfig  # noqa: E402
from tango_core.models.base import TangoGeneration, TangoVideoLM, VideoClip  # noqa: E402


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
        self.adapter: TangoVideoLM = load_adapter(self.settings, self.device)
        self.last_generation: Optional[TangoGeneration] = None
        self._clip: Optional[VideoClip] = None

    @property
    def tango_config(self) -> Optional[TangoConfig]:
        """Tango's configuration (None for the vanilla model)."""
        return self.adapter.tango

    def load_clip(self, path: str) -> VideoClip:
        """Decode the frames the adapter samples from ``path`` under the current nframe / fps
        (thread-safe: the runner decodes the next samples while the GPU answers the current one)."""
        return sample_clip(self.adapter, path, self.nframe, self.fps)

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
        clip = self._clip if self._clip is not None and self._clip.source == path else self.load_clip(path)
        fit_adapter_to(self.adapter, clip)
        generation = self.adapter.generate(clip, question, max_new_tokens=int(self.settings.max_new_tokens))
        self.last_generation = generation
        return printable(generation.text).strip() or EMPTY_ANSWER


class TangoLlavaOneVision(TangoVideoModel):
    """LLaVA-OneVision-7B (32 frames, fp16) with Tango before the LLM."""

    MODEL = "llava_onevision"


class TangoLlavaVideo(TangoVideoModel):
    """LLaVA-Video-7B (64 frames, fp16) with Tango before the LLM and its intra-LLM stage at layer K."""

    MODEL = "llava_video"


class TangoQwen25VL(TangoVideoModel):
    """Qwen2.5-VL-7B (2 fps up to 128 frames, or the dataset's frame count; bf16) with Tango."""

    MODEL = "qwen2_5_vl"


MODEL_CLASSES = {cls.__name__: cls for cls in (TangoLlavaOneVision, TangoLlavaVideo, TangoQwen25VL)}


def register_models() -> None:
    """Make the classes visible to VLMEvalKit: ``vlmeval.vlm.<Class>`` and ``supported_VLM[<name>]``."""
    import vlmeval.config
    import vlmeval.vlm

    for cls in MODEL_CLASSES.values():
        setattr(vlmeval.vlm, cls.__name__, cls)
        vlmeval.config.supported_VLM[cls.MODEL] = functools.partial(cls)

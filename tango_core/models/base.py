"""The contract every model adapter fulfils: load, prepare a video, generate, report stats."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from ..config import TangoConfig


@dataclass
class VideoClip:
    """Decoded frames of one video and when they were taken.

    frames: (T, H, W, 3) uint8 RGB. timestamps: (T,) seconds of each sampled frame.
    frame_indices: (T,) indices into the source video. source_fps / num_source_frames describe
    the source (for arrays given directly, fps defaults to 1.0 and indices to 0..T-1). source: the
    file the frames were decoded from, when known.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    frame_indices: np.ndarray
    source_fps: float
    num_source_frames: int
    source: Optional[str] = None

    @property
    def duration(self) -> float:
        """Length of the source video in seconds."""
        return self.num_source_frames / self.source_fps if self.source_fps > 0 else 0.0


VideoSource = Union[str, np.ndarray, List[np.ndarray], VideoClip]


@dataclass
class TangoStats:
    """Per-call statistics of one prefill.

    visual_tokens_before / after: visual tokens entering Tango and leaving it (what the LLM's
    first layer sees). visual_tokens_after_intra_llm: for LLaVA-Video's intra-LLM stage, the
    visual tokens in layers K and up (None elsewhere). times_ms: per-stage wall times in
    milliseconds (keys such as "vit", "prune", "prefill"), measured with device synchronisation.
    segments: Tango's temporal segments (frames per segment; None without pruning).
    """

    visual_tokens_before: int = 0
    visual_tokens_after: int = 0
    visual_tokens_after_intra_llm: Optional[int] = None
    num_frames: int = 0
    times_ms: Dict[str, float] = field(default_factory=dict)
    segments: Optional[List[int]] = None


@dataclass
class TangoGeneration:
    """What :meth:`TangoVideoLM.generate` returns."""

    text: str
    token_ids: torch.Tensor
    stats: TangoStats


def answer_without_autograd(generate):
    """Run a ``generate`` method in inference mode (less host overhead per operation, which
    dominates eager decoding) and hand its token ids back as an ordinary tensor."""

    def wrapper(self, *args, **kwargs) -> "TangoGeneration":
        with torch.inference_mode():
            result = generate(self, *args, **kwargs)
        if not torch.is_inference_mode_enabled():
            result.token_ids = result.token_ids.clone()
        return result

    wrapper.__name__ = generate.__name__
    wrapper.__doc__ = generate.__doc__
    return wrapper


class TangoVideoLM(ABC):
    """A transformers video LLM with Tango attached (``tango=None`` runs it unmodified)."""

    family: str = ""

    def __init__(self, tango: Optional[TangoConfig]) -> None:
        self.tango = tango

    @abstractmethod
    def generate(self, video: VideoSource, question: str, max_new_tokens: int = 16, **kwargs) -> TangoGeneration:
        """Answer ``question`` about ``video`` greedily."""

    @abstractmethod
    def first_token_logits(self, video: VideoSource, question: str) -> torch.Tensor:
        """Logits (vocab,) of the first generated token, for equivalence tests."""

"""The pipeline every model adapter runs, and the records it fills.

One call of :meth:`TangoVideoLM.generate`::

    video --load_clip--> frames --encode--> visual tokens (features, saliency)
          --prune--> kept tokens (tango_prune) --splice--> the LLM's prompt (embeddings, positions)
          --prefill--> first logits --greedy_decode--> answer

A family (``llava.py``, ``qwen2_5_vl.py``) supplies only what differs between models: how frames
are sampled (:meth:`~TangoVideoLM.load_clip`), how the vision side yields features and saliency
(:meth:`~TangoVideoLM.encode`), how kept tokens enter the prompt (:meth:`~TangoVideoLM.splice`),
and how its language model runs a prompt and a decoding step (:meth:`~TangoVideoLM.start`,
:meth:`~TangoVideoLM.step`). Sampling, pruning, the greedy decoder, the timer and the statistics
are shared. At ``retention_ratio=1.0`` (or ``tango=None``) no saliency is computed and
``tango_prune`` is never called: the prompt is the unmodified model's.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..config import TangoConfig

DECODING: Tuple[str, ...] = ("auto", "graphs", "compiled", "static", "dynamic")


def check_option(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ``ValueError("<name> must be one of <choices>, got <value>.")`` unless value is a choice."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")


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
    """The statistics of one call.

    visual_tokens_before / after: visual tokens entering Tango and the visual embeddings the LLM's
    first layer sees (LLaVA's newline embeddings included). visual_tokens_after_intra_llm:
    LLaVA-Video's visual tokens in layers K and up (None elsewhere). num_frames: frames sampled.
    times_ms: milliseconds per stage ("load", "preprocess", "vit", "project", "prune", "splice",
    "prefill", "decode"; see :class:`StageTimer`). first_token_ms: wall time from the start of the
    call to the first token on the host. new_tokens: tokens generated. segments: Tango's temporal
    segments (frames per segment; None without pruning).
    """

    visual_tokens_before: int = 0
    visual_tokens_after: int = 0
    visual_tokens_after_intra_llm: Optional[int] = None
    num_frames: int = 0
    times_ms: Dict[str, float] = field(default_factory=dict)
    first_token_ms: Optional[float] = None
    new_tokens: int = 0
    segments: Optional[List[int]] = None


@dataclass
class TangoGeneration:
    """What :meth:`TangoVideoLM.generate` returns: the answer's text, its token ids (n,) int64 and the statistics."""

    text: str
    token_ids: torch.Tensor
    stats: TangoStats


@dataclass
class VisualTokens:
    """What the vision side hands to Tango for one clip.

    features: (N, L, D) LLM-side visual features (after the projector or merger), N temporal frames
    of L = H * W tokens. saliency: (N, L) float32 attention weights, or None when not pruning.
    grid: (H, W). timestamps: (N,) float32 seconds. global_features: (N, D') for the fastvid
    segmenter, or None.
    """

    features: torch.Tensor
    saliency: Optional[torch.Tensor]
    grid: Tuple[int, int]
    timestamps: torch.Tensor
    global_features: Optional[torch.Tensor] = None


@dataclass
class KeptTokens:
    """Tango's output for one clip: sorted flat indices (K,) into N * L, their features (K, D) and
    the segments (None when nothing was pruned)."""

    keep_index: torch.Tensor
    features: torch.Tensor
    segments: Optional[List[int]] = None


class StageTimer:
    """Milliseconds per named stage, without synchronising between stages.

    On CUDA each stage is bracketed by CUDA events on the current stream: a stage's time is the
    span between the stream reaching its start and its end (host work inside the stage shows as
    the gap it leaves on the stream). Events are read once, in :meth:`times_ms`. On CPU: wall
    clock. Repeated stages add up.
    """

    def __init__(self, device: Union[str, torch.device]) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._spans: List[Tuple[str, Any, Any]] = []

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = self._now()
        try:
            yield
        finally:
            self._spans.append((name, start, self._now()))

    def times_ms(self) -> Dict[str, float]:
        """Stage -> milliseconds (waits for the last event on CUDA)."""
        times: Dict[str, float] = {}
        if self.cuda and self._spans:
            self._spans[-1][2].synchronize()
        for name, start, end in self._spans:
            elapsed = start.elapsed_time(end) if self.cuda else (end - start) * 1e3
            times[name] = times.get(name, 0.0) + float(elapsed)
        return times


def greedy_decode(
    first_logits: Callable[[], torch.Tensor],
    step: Callable[[torch.Tensor, int], torch.Tensor],
    stop_token_ids: Sequence[int],
    max_new_tokens: int,
    keep_logits: bool = False,
    on_first_token: Optional[Callable[[], None]] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Greedy decoding (argmax, no penalties), the one decoder of every adapter.

    ``first_logits()`` runs the prompt and gives the logits (1, V) of the first new token;
    ``step(token, n)`` feeds new token number ``n`` (a (1,) tensor) and gives the next logits.
    Stops after a stop token (kept in the output) or ``max_new_tokens`` tokens. Returns the ids
    (n,) int64 on CPU and, with ``keep_logits``, every step's logits (n, V) float32 on CPU.
    """
    if max_new_tokens <= 0:
        return torch.empty(0, dtype=torch.long), (torch.empty(0) if keep_logits else None)
    stop = set(int(t) for t in stop_token_ids)
    logits = first_logits()
    tokens: List[int] = []
    kept: List[torch.Tensor] = []
    for n in range(max_new_tokens):
        token = logits.argmax(dim=-1).reshape(1)
        if keep_logits:
            kept.append(logits.reshape(-1).float().cpu())
        tokens.append(int(token))  # the one host synchronisation per token: whether to stop
        if n == 0 and on_first_token is not None:
            on_first_token()
        if tokens[-1] in stop or n == max_new_tokens - 1:
            break
        logits = step(token, n)
    ids = torch.tensor(tokens, dtype=torch.long)
    return ids, (torch.stack(kept) if keep_logits else None)


@dataclass
class Prefill:
    """The language model's input for one call; families subclass it with what their LLM needs.

    inputs_embeds: (1, S, D). visual_start / visual_length: the span of the video's embeddings in
    the prompt. kept: Tango's output (every token when not pruning). clip: the frames. stats: the
    call's statistics, filled as the pipeline runs.
    """

    inputs_embeds: torch.Tensor
    visual_start: int
    visual_length: int
    kept: KeptTokens
    clip: VideoClip
    stats: TangoStats = field(default_factory=TangoStats)
    max_new_tokens: int = 1  # set by the decoder before the prefill (sizes static caches)

    @property
    def keep_index(self) -> torch.Tensor:
        """(K,) kept flat indices into N * L (all of them without pruning)."""
        return self.kept.keep_index


class TangoVideoLM(ABC):
    """A transformers video LLM with Tango before its language model (``tango=None``: unmodified).

    Subclasses set ``family`` and implement the hooks below; everything else is shared.
    """

    family: ClassVar[str] = ""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, tango: Optional[TangoConfig], stop_token_ids: Sequence[int]) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tango = tango
        self.stop_token_ids: List[int] = sorted({int(t) for t in stop_token_ids})
        self.decoding = "auto"
        self._static = None

    # -- what a family supplies ----------------------------------------------------------------

    @abstractmethod
    def load_clip(self, video: VideoSource) -> VideoClip:
        """The frames this model samples from ``video`` (a path, frames, or a VideoClip)."""

    @abstractmethod
    def encode(self, clip: VideoClip, with_saliency: bool, timer: StageTimer) -> VisualTokens:
        """Pixels, vision tower and saliency; timed as "preprocess", "vit" and "project"."""

    def prepare_text(self, question: str, clip: VideoClip, visual: VisualTokens) -> Any:
        """The prompt's work that needs no vision output (tokenising, position ids), run by
        :meth:`prepare` right after :meth:`encode` has queued the vision tower and before
        anything waits for it: on CUDA the host does it while the GPU runs the tower. It must not
        synchronise with the device (host tensors, non-blocking uploads). Its result reaches
        :meth:`splice` as ``text``; the default, None, leaves everything to :meth:`splice`."""
        return None

    @abstractmethod
    def splice(self, question: str, visual: VisualTokens, kept: KeptTokens, clip: VideoClip, text: Any = None) -> Prefill:
        """The prompt with the kept visual tokens in it (embeddings and whatever positions the LLM
        needs); ``text``: what :meth:`prepare_text` returned."""

    @abstractmethod
    def start(self, prefill: Prefill) -> Tuple[torch.Tensor, Any]:
        """Run the prompt: (logits (1, V) of the first new token, decoding state)."""

    @abstractmethod
    def step(self, token: torch.Tensor, state: Any, n: int) -> Tuple[torch.Tensor, Any]:
        """Feed new token number ``n`` (1,): (logits (1, V) of the next one, state)."""

    # -- shared --------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Device of the language model's input embeddings."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model."""
        return self.model.dtype

    @property
    def prunes(self) -> bool:
        """Whether Tango removes tokens (configured, r < 1)."""
        return self.tango is not None and self.tango.retention_ratio < 1.0

    def _static_decoding(self, position_shape=(1, 1)):
        """The static-cache decoder of this adapter, or None when decoding on a growing cache.

        ``decoding``: "graphs" (static cache; on CUDA the prompt padded and its prefill and the
        steps replayed as CUDA graphs), "compiled" (the same with each step ``torch.compile``-d
        before its capture: faster steps, tens of seconds of compiling on the first call), "static"
        (static cache, eager), "dynamic" (transformers' DynamicCache), "auto" (graphs on CUDA,
        dynamic elsewhere).
        """
        mode = self.decoding
        check_option("decoding", mode, DECODING)
        if mode == "dynamic" or (mode == "auto" and self.device.type != "cuda"):
            return None
        if self._static is None:
            from .static_decoding import StaticDecoding

            text_config = self.model.config.get_text_config(decoder=True)
            self._static = StaticDecoding(
                self.model, text_config, self.device, position_shape,
                capture=mode in ("auto", "graphs", "compiled"), compile_steps=mode == "compiled",
            )
        return self._static

    def prune(self, visual: VisualTokens) -> KeptTokens:
        """``tango_prune`` on the visual tokens, or all of them when not pruning."""
        num_frames, per_frame, dim = visual.features.shape
        if not self.prunes:
            keep = torch.arange(num_frames * per_frame, device=visual.features.device)
            return KeptTokens(keep, visual.features.reshape(-1, dim))
        from ..prune import tango_prune

        result = tango_prune(visual.features, visual.saliency, visual.grid, visual.timestamps, self.tango, visual.global_features)
        return KeptTokens(result.keep_index.to(visual.features.device), result.kept_features, result.segments)

    def prepare(self, video: VideoSource, question: str, timer: Optional[StageTimer] = None) -> Prefill:
        """Sample, encode, prune and splice: the LLM's input for ``question`` about ``video``.

        Stage times go to ``timer`` when one is given (read by the caller), else into the stats.
        """
        own_timer = timer is None
        timer = timer or StageTimer(self.device)
        with torch.inference_mode():
            with timer("load"):
                clip = self.load_clip(video)
            visual = self.encode(clip, with_saliency=self.prunes, timer=timer)
            text = self.prepare_text(question, clip, visual)  # host work, overlapping the vision tower
            with timer("prune"):
                kept = self.prune(visual)
            with timer("splice"):
                prefill = self.splice(question, visual, kept, clip, text)
        stats = prefill.stats
        stats.num_frames = int(clip.frames.shape[0])
        stats.visual_tokens_before = int(visual.features.shape[0] * visual.features.shape[1])
        stats.segments = kept.segments
        if own_timer:
            stats.times_ms.update(timer.times_ms())
        return prefill

    def decode(
        self, prefill: Prefill, max_new_tokens: int, timer: Optional[StageTimer] = None, keep_logits: bool = False,
        started: Optional[float] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Prefill and greedy decoding from a prepared input: ids (n,) and optionally logits (n, V)."""
        timer = timer or StageTimer(self.device)
        state: Dict[str, Any] = {}
        begun = time.perf_counter() if started is None else started
        prefill.max_new_tokens = max(int(max_new_tokens), 1)

        def first_logits() -> torch.Tensor:
            with timer("prefill"):
                logits, state["llm"] = self.start(prefill)
            return logits

        def next_logits(token: torch.Tensor, n: int) -> torch.Tensor:
            with timer("decode"):
                logits, state["llm"] = self.step(token.to(self.device), state["llm"], n)
            return logits

        def first_token() -> None:
            prefill.stats.first_token_ms = (time.perf_counter() - begun) * 1e3

        with torch.inference_mode():
            ids, logits = greedy_decode(first_logits, next_logits, self.stop_token_ids, max_new_tokens, keep_logits, first_token)
        prefill.stats.new_tokens = int(ids.numel())
        # Copies made outside inference mode are ordinary tensors that callers may use freely.
        return ids.clone(), (logits.clone() if logits is not None else None)

    def generate(self, video: VideoSource, question: str, max_new_tokens: int = 16) -> TangoGeneration:
        """Answer ``question`` about ``video`` greedily (at most ``max_new_tokens`` tokens)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        started = time.perf_counter()
        timer = StageTimer(self.device)
        return self.generate_from_inputs(self.prepare(video, question, timer), max_new_tokens, timer, started)

    def generate_from_inputs(
        self, prefill: Prefill, max_new_tokens: int = 16, timer: Optional[StageTimer] = None, started: Optional[float] = None,
    ) -> TangoGeneration:
        """Greedy answer from a prepared input (:meth:`prepare`); stage times of ``timer`` included."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        timer = timer or StageTimer(self.device)
        ids, _ = self.decode(prefill, max_new_tokens, timer, started=started)
        prefill.stats.times_ms.update(timer.times_ms())
        return TangoGeneration(self.decode_text(ids), ids, prefill.stats)

    def first_token_logits(self, video: VideoSource, question: str) -> torch.Tensor:
        """Logits (vocab,) float32 on CPU of the first answer token, for equivalence tests."""
        prefill = self.prepare(video, question)
        with torch.inference_mode():
            logits, _ = self.start(prefill)
        return logits.reshape(-1).float().cpu().clone()

    def decode_text(self, ids: torch.Tensor) -> str:
        """The answer's text (special tokens dropped, surrounding space stripped)."""
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=True).strip()

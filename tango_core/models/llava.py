"""Tango for LLaVA-OneVision and LLaVA-Video on transformers' ``LlavaOnevisionForConditionalGeneration``.

Spec sections 5 to 7. The adapter builds the LLM's input embeddings itself:

    [prompt before <image>] [pruned video tokens + newline embeddings] [prompt after <image>]

* features: vision tower hidden states of ``config.vision_feature_layer`` (the second-to-last
  SigLIP layer, before ``post_layernorm``), then the multimodal projector, pooled per frame
  (OneVision: bilinear 27x27 -> 14x14; LLaVA-Video: 2x2 average pooling -> 13x13);
* saliency: SigLIP's attention-pooling head over ``post_layernorm`` of the same hidden states,
  pooled the same way (:class:`~tango_core.models.siglip_head.SiglipSaliencyHead`);
* newlines: OneVision one ``image_newline`` after the video (what transformers' video path does);
  LLaVA-Video one after every grid row of a frame that still holds a kept token;
* LLaVA-Video's intra-LLM stage (spec 6) through :class:`IntraLLMQwen2Runner`.

Without Tango (``tango=None``) or at ``retention_ratio=1.0`` nothing is pruned and the layout is
the vanilla model's, so logits and greedy text equal the unmodified model's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..config import TangoConfig
from ..intra_llm import IntraLLMConfig
from .families import get_family
from .base import DECODING, KeptTokens, check_option, Prefill, StageTimer, TangoStats, TangoVideoLM, VideoClip, VideoSource, VisualTokens
from .siglip_head import DEFAULT_SIGLIP_ID, SiglipSaliencyHead
from .siglip_tower import SiglipTower
from .video import to_clip

LLAVA_FAMILIES: Tuple[str, ...] = ("llava_onevision", "llava_video")
PREPROCESSING: Tuple[str, ...] = ("auto", "pil", "torch")
VISION_BLOCKS: Tuple[str, ...] = ("auto", "graphs", "fused", "transformers")
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


def default_attn_implementation() -> str:
    """``flash_attention_2`` when flash_attn is importable and CUDA is up, else ``sdpa``."""
    import importlib.util

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


@dataclass
class LlavaInputs(Prefill):
    """One prepared LLaVA prompt: ``[prompt before <image>] [video tokens + newlines] [prompt after]``.

    grid: (H, W) of one pooled frame. See :class:`~tango_core.models.base.Prefill` for the rest.
    """

    grid: Tuple[int, int] = (0, 0)


class LlavaTango(TangoVideoLM):
    """LLaVA-OneVision (``family="llava_onevision"``) or LLaVA-Video (``"llava_video"``) with Tango.

    model: a ``LlavaOnevisionForConditionalGeneration``; tokenizer: its tokenizer.
    tango: Tango configuration, or None for the unmodified model.
    num_frames: frames sampled per video (default 32 for OneVision, 64 for LLaVA-Video).
    saliency_head: SigLIP ``post_layernorm`` + head; loaded from ``siglip_path`` on first need.
    intra_llm: LLaVA-Video's intra-LLM stage (runs only for llava_video, with Tango at r < 1);
        None switches it off.
    preprocessing: ``"pil"`` resizes each frame with PIL's bicubic filter, exactly as the
        reference's image processor does (CPU); ``"torch"`` resizes all frames at once on the
        model's device (antialiased bicubic, rounded to integers like PIL's output; within a grey
        level of PIL's); ``"auto"`` (default): torch on CUDA, PIL elsewhere.
    vision_blocks: the SigLIP tower (:mod:`~tango_core.models.siglip_tower`): ``"transformers"``
        runs its layers as transformers defines them; ``"fused"`` puts the MLP's tanh-GELU into its
        first product's epilogue (the same function, rounded once instead of twice); ``"graphs"``
        also replays the tower as one CUDA graph per input shape; ``"auto"`` (default): graphs on
        CUDA, transformers elsewhere.
    upload_chunk_frames: on CUDA with the graphed tower and on-device resizing, frames go up in
        pieces of this many, the tower running on each piece while the next uploads (None: all at
        once).
    decoding: ``"graphs"``, ``"compiled"``, ``"static"``, ``"dynamic"`` or ``"auto"`` (see
        :meth:`~tango_core.models.base.TangoVideoLM._static_decoding`); the intra-LLM stage's
        prefill is two graphed prefills (the layers below K, then those from K on, with the choice
        of the kept tokens between them), its steps graphed too; with ``reference_bidirectional_bug``
        it prefills and decodes on a growing cache.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        tango: Optional[TangoConfig] = None,
        family: str = "llava_onevision",
        num_frames: Optional[int] = None,
        saliency_head: Optional[SiglipSaliencyHead] = None,
        siglip_path: str = DEFAULT_SIGLIP_ID,
        intra_llm: Optional[IntraLLMConfig] = IntraLLMConfig(),
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        preprocessing: str = "auto",
        vision_blocks: str = "auto",
        decoding: str = "auto",
        upload_chunk_frames: Optional[int] = 8,
    ) -> None:
        check_option("preprocessing", preprocessing, PREPROCESSING)
        if upload_chunk_frames is not None and int(upload_chunk_frames) < 1:
            raise ValueError(f"upload_chunk_frames must be >= 1 (or None for one upload), got {upload_chunk_frames}.")
        check_option("vision_blocks", vision_blocks, VISION_BLOCKS)
        check_option("decoding", decoding, DECODING)
        if family not in LLAVA_FAMILIES:
            raise ValueError(f"Unknown LLaVA family {family!r}; choose one of {LLAVA_FAMILIES}.")
        config = model.config
        if config.vision_feature_select_strategy != "full":
            raise ValueError(
                "Only vision_feature_select_strategy='full' is supported (SigLIP has no CLS token to drop); "
                f"got {config.vision_feature_select_strategy!r}."
            )
        if not isinstance(config.vision_feature_layer, int):
            raise ValueError(f"vision_feature_layer must be a single layer index, got {config.vision_feature_layer!r}.")
        super().__init__(model, tokenizer, tango, stop_token_ids=_stop_tokens(tokenizer))
        self.family = family
        self.num_frames = int(num_frames) if num_frames is not None else int(get_family(family).frames)
        self.saliency_head = saliency_head
        self.siglip_path = siglip_path
        self.system_prompt = system_prompt
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.preprocessing = preprocessing
        self.vision_blocks = vision_blocks
        self._tower: Optional[SiglipTower] = None
        self.upload_chunk_frames = None if upload_chunk_frames is None else int(upload_chunk_frames)
        self._upload_stream: Optional[torch.cuda.Stream] = None
        self.decoding = decoding
        self.num_layers = int(config.text_config.num_hidden_layers)
        self.intra_llm = intra_llm
        # K is resolved (and checked) now, so that a bad K fails at load time.
        self.intra_llm_layer = intra_llm.resolved_layer(self.num_layers) if intra_llm is not None else None
        self._intra_runner = None
        vision = config.vision_config
        self.patch_grid = int(vision.image_size) // int(vision.patch_size)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        tango: Optional[TangoConfig] = None,
        family: Optional[str] = None,
        dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
        attn_implementation: Optional[str] = None,
        siglip_path: Optional[str] = None,
        config=None,
        **kwargs,
    ) -> "LlavaTango":
        """Load a LLaVA-OneVision-format checkpoint (directory or hub id) with its tokenizer.

        dtype: default float16 on CUDA (the paper's), float32 on CPU. device: default CUDA when
        available. attn_implementation: default ``flash_attention_2`` if importable, else ``sdpa``.
        family: default from the config's ``tango_family`` key, else ``llava_video`` when the path
        names LLaVA-Video, else OneVision. siglip_path: SigLIP checkpoint with the attention-pooling
        head (default: the config's ``tango_siglip`` key, relative to the model directory, else
        google/siglip-so400m-patch14-384). config: the checkpoint's already loaded config.
        Other keyword arguments go to the constructor (num_frames, intra_llm, ...).
        """
        from transformers import AutoConfig, AutoTokenizer, LlavaOnevisionForConditionalGeneration

        config = AutoConfig.from_pretrained(path) if config is None else config
        family = family or detect_llava_family(config, path)
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = (torch.float16 if device.type == "cuda" else torch.float32) if dtype is None else dtype
        model = LlavaOnevisionForConditionalGeneration.from_pretrained(
            path, config=config, dtype=dtype, attn_implementation=attn_implementation or default_attn_implementation()
        ).to(device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model, tokenizer, tango=tango, family=family, siglip_path=resolve_siglip_path(config, path, siglip_path), **kwargs)

    @staticmethod
    def detect_family(config, path: str = "") -> str:
        """Which LLaVA family a checkpoint is (see :func:`detect_llava_family`)."""
        return detect_llava_family(config, path)

    @property
    def uses_intra_llm(self) -> bool:
        """Whether prefill runs the intra-LLM stage (LLaVA-Video, enabled, pruning)."""
        return self.family == "llava_video" and self.intra_llm is not None and self.prunes

    def _get_saliency_head(self) -> SiglipSaliencyHead:
        """The SigLIP head, loaded on first use in the model's dtype and device."""
        if self.saliency_head is None:
            self.saliency_head = SiglipSaliencyHead.from_pretrained(self.siglip_path, dtype=self.dtype, device=self.device)
        return self.saliency_head

    # -- prompt --------------------------------------------------------------------------------

    def time_instruction(self, clip: VideoClip) -> str:
        """LLaVA-Video's sentence about duration, frame count and frame times (spec 7, frame count fixed)."""
        times = ",".join(f"{t:.2f}s" for t in np.asarray(clip.timestamps, dtype=np.float64))
        return (
            f"The video lasts for {clip.duration:.2f} seconds, and {len(clip.timestamps)} frames are uniformly "
            f"sampled from it. These frames are located at {times}. "
            "Please answer the following questions related to this video."
        )

    def prompt_parts(self, question: str, clip: VideoClip) -> Tuple[str, str]:
        """Text before and after the video in the ``qwen_1_5`` template (the video replaces ``<image>``)."""
        before = f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n<|im_start|>user\n"
        text = f"{self.time_instruction(clip)}\n{question}" if self.family == "llava_video" else question
        after = f"\n{text}<|im_end|>\n<|im_start|>assistant\n"
        return before, after

    def _tokenize(self, text: str) -> torch.Tensor:
        """(T,) int64 ids of ``text`` without added special tokens, on the model's device (uploaded
        without waiting for the device's queued work)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long).to(self.device, non_blocking=True)

    # -- vision --------------------------------------------------------------------------------

    def load_clip(self, video: VideoSource) -> VideoClip:
        """``num_frames`` frames at ``linspace(0, total - 1, n)`` cast to int (the reference's sampling)."""
        return to_clip(video, num_frames=self.num_frames)

    @property
    def _resizes_on_device(self) -> bool:
        return self.preprocessing == "torch" or (self.preprocessing == "auto" and self.device.type == "cuda")

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (T, 3, S, S) pixels: bicubic squash-resize, /255, (x - mean) / std."""
        size = int(self.model.config.vision_config.image_size)
        if frames.shape[1:3] != (size, size) and not self._resizes_on_device:
            frames = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in frames])
        return self.normalise(torch.from_numpy(np.ascontiguousarray(frames)).to(self.device))

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, H, W, 3) uint8 on the model's device -> (T, 3, S, S) pixels (resized on the device
        if they are not S x S yet)."""
        size = int(self.model.config.vision_config.image_size)
        pixels = frames.permute(0, 3, 1, 2).float()
        if pixels.shape[-2:] != (size, size):  # on the device: one antialiased resize of every frame
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
            pixels = pixels.clamp_(0.0, 255.0).round_()
        mean = torch.tensor(self.image_mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=self.device).view(1, 3, 1, 1)
        pixels = (pixels * (1.0 / 255.0) - mean) / std
        return pixels.to(self.dtype)

    def vision_hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, P, Dv) hidden states of ``vision_feature_layer`` (before post_layernorm).

        Runs the encoder only up to that layer (the same modules and order as the full tower), the
        way ``vision_blocks`` says.
        """
        mode = self.vision_blocks
        if mode == "auto":
            mode = "graphs" if self.device.type == "cuda" else "transformers"
        if self._tower is None or self._tower.mode != mode:
            tower = self.model.model.vision_tower
            layers = tower.encoder.layers
            index = int(self.model.config.vision_feature_layer)
            stop = index if index >= 0 else len(layers) + 1 + index  # hidden_states[0] is the embedding output
            if not 0 <= stop <= len(layers):
                raise ValueError(f"vision_feature_layer {index} is out of range for a tower of {len(layers)} layers.")
            self._tower = SiglipTower.of(tower, stop, mode=mode)
        return self._tower(pixels)

    def _pool(self, grid_maps: torch.Tensor) -> torch.Tensor:
        """(N, C, G, G) -> (N, C, h, w): OneVision bilinear to ceil(G/2); LLaVA-Video 2x2 average, floor."""
        if self.family == "llava_onevision":
            size = (math.ceil(grid_maps.shape[2] / 2), math.ceil(grid_maps.shape[3] / 2))
            return F.interpolate(grid_maps, size=size, mode="bilinear", align_corners=False)
        return F.avg_pool2d(grid_maps, kernel_size=2, stride=2)

    def pool_features(self, features: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(N, G*G, D) projected features -> ((N, h*w, D) pooled per frame, (h, w))."""
        n, p, d = features.shape
        # Left channels-last: CUDA's NCHW bilinear kernel parallelises over the 14x14 outputs only
        # and loops over N * D maps (tens of ms at D = 3584); the channels-last kernel does not.
        maps = features.view(n, self.patch_grid, self.patch_grid, d).permute(0, 3, 1, 2)
        pooled = self._pool(maps)
        grid = (int(pooled.shape[2]), int(pooled.shape[3]))
        return pooled.permute(0, 2, 3, 1).reshape(n, grid[0] * grid[1], d), grid

    def pool_saliency(self, saliency: torch.Tensor) -> torch.Tensor:
        """(N, G*G) attention -> (N, h*w), pooled like the features, not renormalised."""
        n = saliency.shape[0]
        maps = saliency.view(n, 1, self.patch_grid, self.patch_grid)
        return self._pool(maps).reshape(n, -1)

    def _streams_frames(self, frames: np.ndarray) -> bool:
        """Whether :meth:`encode` uploads the frames in pieces, each piece's tower overlapping the
        next piece's upload (CUDA, resized on the device, the graphed tower, more than one piece)."""
        mode = self.vision_blocks if self.vision_blocks != "auto" else ("graphs" if self.device.type == "cuda" else "transformers")
        chunk = self.upload_chunk_frames
        return (self.device.type == "cuda" and mode == "graphs" and self._resizes_on_device
                and chunk is not None and 0 < chunk < len(frames))

    def streamed_hidden_states(self, frames: np.ndarray, timer: StageTimer) -> torch.Tensor:
        """:meth:`preprocess` then :meth:`vision_hidden_states` of (T, H, W, 3) uint8 frames, in
        pieces of ``upload_chunk_frames``: each piece goes up on a side stream while the tower runs
        on the pieces before it (an upload from pageable memory holds the host for its whole
        length, so one upload of every frame would leave the GPU idle). SigLIP sees each frame
        alone, so the output is the whole batch's up to the rounding of products of another size.
        Timed: "preprocess" up to the first piece's pixels, "vit" the rest."""
        device = self.device
        compute = torch.cuda.current_stream(device)
        if self._upload_stream is None:
            self._upload_stream = torch.cuda.Stream(device)
        chunk = int(self.upload_chunk_frames)

        def pixels_of(first: int) -> torch.Tensor:
            with torch.cuda.stream(self._upload_stream):
                raw = torch.from_numpy(np.ascontiguousarray(frames[first:first + chunk])).to(device, non_blocking=True)
            compute.wait_stream(self._upload_stream)
            raw.record_stream(compute)  # allocated on the upload stream, read on this one
            return self.normalise(raw)

        with timer("preprocess"):
            pixels = pixels_of(0)
        with timer("vit"):
            pieces = [self.vision_hidden_states(pixels)]
            for first in range(chunk, len(frames), chunk):  # queued behind the tower of the pieces before
                pieces.append(self.vision_hidden_states(pixels_of(first)))
            hidden = torch.cat(pieces)
        return hidden

    def encode(self, clip: VideoClip, with_saliency: bool, timer: StageTimer) -> VisualTokens:
        """SigLIP's second-to-last layer, the projector, per-frame pooling; saliency from SigLIP's head."""
        if self._streams_frames(clip.frames):
            hidden = self.streamed_hidden_states(clip.frames, timer)
        else:
            with timer("preprocess"):
                pixels = self.preprocess(clip.frames)
            with timer("vit"):
                hidden = self.vision_hidden_states(pixels)  # (N, P, Dv)
        with timer("vit"):
            head_out = None
            if with_saliency:
                head_out = self._get_saliency_head()(hidden, with_pooled=self.tango.segmenter == "fastvid")
        with timer("project"):
            features, grid = self.pool_features(self.model.model.multi_modal_projector(hidden))
            saliency = self.pool_saliency(head_out.attention) if head_out is not None else None
            timestamps = torch.from_numpy(np.asarray(clip.timestamps, dtype=np.float32)).to(self.device, non_blocking=True)
        return VisualTokens(features, saliency, grid, timestamps, head_out.pooled if head_out is not None else None)

    # -- prompt with the video -----------------------------------------------------------------

    def video_layout(self, keep_index: torch.Tensor, kept: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """Kept tokens (K, D) at sorted flat indices (K,) -> the video's embedding sequence (V, D).

        OneVision: the tokens, then one newline. LLaVA-Video: a newline after the last kept token of
        every (frame, row) that keeps at least one token.
        """
        newline = self.model.model.image_newline.to(kept.dtype)
        if self.family == "llava_onevision":
            return torch.cat([kept, newline[None]], dim=0)
        row = torch.div(keep_index, grid[1], rounding_mode="floor")  # frame * H + row
        row_end = torch.ones_like(row, dtype=torch.bool)
        row_end[:-1] = row[1:] != row[:-1]
        ends_before = torch.cumsum(row_end.long(), 0) - row_end.long()
        token_slot = torch.arange(row.numel(), device=row.device) + ends_before
        out = kept.new_empty((row.numel() + int(row_end.sum()), kept.shape[1]))
        out[token_slot] = kept
        out[token_slot[row_end] + 1] = newline
        return out

    def prepare_text(self, question: str, clip: VideoClip, visual: VisualTokens) -> Tuple[torch.Tensor, torch.Tensor]:
        """The ids (T,) of the prompt before and after the video, tokenised while the GPU runs SigLIP."""
        before, after = self.prompt_parts(question, clip)
        return self._tokenize(before), self._tokenize(after)

    def splice(
        self, question: str, visual: VisualTokens, kept: KeptTokens, clip: VideoClip,
        text: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> LlavaInputs:
        """``[prompt before <image>] [video tokens + newlines] [prompt after <image>]`` as embeddings
        (``text``: the two id sequences of :meth:`prepare_text`)."""
        video_embeds = self.video_layout(kept.keep_index, kept.features.to(visual.features.dtype), visual.grid)
        embed = self.model.get_input_embeddings()
        pre_ids, post_ids = self.prepare_text(question, clip, visual) if text is None else text
        inputs_embeds = torch.cat([embed(pre_ids), video_embeds.to(self.dtype), embed(post_ids)], dim=0)[None]
        return LlavaInputs(
            inputs_embeds=inputs_embeds,
            visual_start=int(pre_ids.numel()),
            visual_length=int(video_embeds.shape[0]),
            kept=kept,
            clip=clip,
            stats=TangoStats(visual_tokens_after=int(video_embeds.shape[0])),
            grid=visual.grid,
        )

    def prepare_inputs(self, video: VideoSource, question: str) -> LlavaInputs:
        """Sample the video, run the vision side and Tango, and splice the video into the prompt."""
        return self.prepare(video, question)

    # -- language model ------------------------------------------------------------------------

    def _runner(self):
        """The intra-LLM runner over the model's Qwen2 language model (one per setting, kept: its
        decoding step is what a captured graph replays)."""
        from .qwen2_intra_llm import IntraLLMQwen2Runner

        settings = (self.intra_llm_layer, self.intra_llm.keep_ratio, self.intra_llm.merge_weight,
                    self.intra_llm.reference_bidirectional_bug)
        if self._intra_runner is None or self._intra_runner[0] != settings:
            runner = IntraLLMQwen2Runner(
                self.model.model.language_model,
                prune_layer=settings[0],
                keep_ratio=settings[1],
                merge_weight=settings[2],
                reference_bidirectional_bug=settings[3],
            )
            self._intra_runner = (settings, runner)
        return self._intra_runner[1]

    def start(self, prefill: Prefill) -> Tuple[torch.Tensor, Any]:
        """Run the prompt (LLaVA-Video pruning again at layer K); logits (1, V) and the cache."""
        static = self._static_decoding()
        if self.uses_intra_llm:  # its two groups of layers hold caches of two lengths
            runner = self._runner()
            visual_end = prefill.visual_start + prefill.visual_length
            if static is not None and not self.intra_llm.reference_bidirectional_bug:
                key_values = static.cache(prefill.inputs_embeds.shape[1] + prefill.max_new_tokens)
                logits, cache = runner.prefill_static(static, key_values, prefill.inputs_embeds, prefill.visual_start, visual_end)
                prefill.stats.visual_tokens_after_intra_llm = int(cache.num_visual_kept)
                return logits, ("intra_static", runner, cache)
            hidden, cache = runner.prefill(prefill.inputs_embeds, None, prefill.visual_start, visual_end)
            prefill.stats.visual_tokens_after_intra_llm = int(cache.num_visual_kept)
            return self.model.lm_head(hidden[:, -1]), (runner, cache)
        if static is not None:
            length = prefill.inputs_embeds.shape[1]
            cache = static.cache(length + prefill.max_new_tokens)
            positions = torch.arange(length, device=self.device)[None]
            return static.prefill(_static_prefill, cache, prefill.inputs_embeds, positions), ("static", cache, length)
        output = self.model.model.language_model(inputs_embeds=prefill.inputs_embeds, use_cache=True)
        return self.model.lm_head(output.last_hidden_state[:, -1]), (None, output.past_key_values)

    def step(self, token: torch.Tensor, state: Any, n: int) -> Tuple[torch.Tensor, Any]:
        """Feed one token (1,) through the cached language model."""
        if state[0] == "static":
            _, cache, length = state
            position = torch.full((1, 1), length + n, dtype=torch.long)
            return self._static_decoding().step(_static_step, cache, token, length + n, position), state
        if state[0] == "intra_static":
            _, runner, cache = state
            position = torch.full((1, 1), cache.next_position + n, dtype=torch.long)
            return self._static_decoding().step(runner.static_step, cache.key_values, token, n, position), state
        runner, cache = state
        token_embeds = self.model.get_input_embeddings()(token[:, None])  # (1, 1, D)
        if runner is not None:
            hidden, cache = runner.decode_step(token_embeds, cache)
        else:
            output = self.model.model.language_model(inputs_embeds=token_embeds, past_key_values=cache, use_cache=True)
            hidden, cache = output.last_hidden_state, output.past_key_values
        return self.model.lm_head(hidden[:, -1]), (runner, cache)


def _static_prefill(model, embeds: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, last: torch.Tensor, cache) -> torch.Tensor:
    """The prompt (1, S, D) into a static cache at ``slots`` (S,): logits (1, V) of the token at ``last`` (1,)."""
    output = model.model.language_model(
        inputs_embeds=embeds, past_key_values=cache, cache_position=slots, position_ids=positions, use_cache=True
    )
    return model.lm_head(output.last_hidden_state.index_select(1, last)[:, 0])


def _static_step(model, token: torch.Tensor, slot: torch.Tensor, position: torch.Tensor, cache) -> torch.Tensor:
    """One decoding step on a static cache (captured as a CUDA graph on CUDA)."""
    embeds = model.get_input_embeddings()(token)
    output = model.model.language_model(
        inputs_embeds=embeds, past_key_values=cache, cache_position=slot, position_ids=position, use_cache=True
    )
    return model.lm_head(output.last_hidden_state[:, -1])


def _stop_tokens(tokenizer) -> List[int]:
    """Token ids that end generation: ``<|im_end|>`` and the tokenizer's eos."""
    ids = set()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def detect_llava_family(config, path: str = "") -> str:
    """``tango_family`` of the config if set, else ``llava_video`` when the path or name says LLaVA-Video,
    else ``llava_onevision``."""
    family = getattr(config, "tango_family", None)
    if family is not None:
        if family not in LLAVA_FAMILIES:
            raise ValueError(f"Config key tango_family={family!r} is not one of {LLAVA_FAMILIES}.")
        return family
    names = f"{path} {getattr(config, '_name_or_path', '')}".lower().replace("_", "-")
    return "llava_video" if "llava-video" in names else "llava_onevision"


def resolve_siglip_path(config, path: str, siglip_path: Optional[str]) -> str:
    """Explicit ``siglip_path``, else the config's ``tango_siglip`` (relative to a model directory), else the default id."""
    if siglip_path is not None:
        return siglip_path
    configured = getattr(config, "tango_siglip", None)
    if configured is None:
        return DEFAULT_SIGLIP_ID
    local = os.path.join(path, configured)
    return local if os.path.isdir(path) and os.path.isdir(local) else configured

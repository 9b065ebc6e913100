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
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..config import TangoConfig
from ..prune import tango_prune
from .base import TangoGeneration, TangoStats, TangoVideoLM, VideoClip, VideoSource, answer_without_autograd
from .siglip_head import DEFAULT_SIGLIP_ID, SiglipSaliencyHead
from .video import to_clip

LLAVA_FAMILIES: Tuple[str, ...] = ("llava_onevision", "llava_video")
DEFAULT_NUM_FRAMES: Dict[str, int] = {"llava_onevision": 32, "llava_video": 64}
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
# LLaVA-Video-7B prunes inside the LLM at layer 18 of 28 (spec section 6).
REFERENCE_INTRA_LLM_LAYER, REFERENCE_NUM_LAYERS = 18, 28


def default_intra_llm_layer(num_layers: int) -> int:
    """K for a model of ``num_layers`` layers: 18 for 28, else the same fraction rounded, in [1, L-1]."""
    return min(max(int(round(num_layers * REFERENCE_INTRA_LLM_LAYER / REFERENCE_NUM_LAYERS)), 1), num_layers - 1)


def pre_llm_ratio(average_ratio: float, num_layers: int = 28, prune_layer: int = 18, keep_ratio: float = 0.5) -> float:
    """Pre-LLM retention giving an average ``average_ratio`` over the layers: ``min(L r / (K + (L - K) p), 1)``."""
    return min(num_layers * average_ratio / (prune_layer + (num_layers - prune_layer) * keep_ratio), 1.0)


def default_attn_implementation() -> str:
    """``flash_attention_2`` when flash_attn is importable and CUDA is up, else ``sdpa``."""
    import importlib.util

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


@dataclass
class LlavaInputs:
    """One prepared prompt.

    inputs_embeds: (1, S, D) embeddings the LLM receives. visual_start / visual_length: the span of
    the spliced video (newlines included). keep_index: (K,) kept flat indices into N*L (all of them
    without pruning). grid: (H, W) of one pooled frame. clip: the sampled frames.
    """

    inputs_embeds: torch.Tensor
    visual_start: int
    visual_length: int
    keep_index: torch.Tensor
    grid: Tuple[int, int]
    clip: VideoClip
    stats: TangoStats = field(default_factory=TangoStats)


class LlavaTango(TangoVideoLM):
    """LLaVA-OneVision (``family="llava_onevision"``) or LLaVA-Video (``"llava_video"``) with Tango.

    model: a ``LlavaOnevisionForConditionalGeneration``; tokenizer: its tokenizer.
    tango: Tango configuration, or None for the unmodified model.
    num_frames: frames sampled per video (default 32 for OneVision, 64 for LLaVA-Video).
    saliency_head: SigLIP ``post_layernorm`` + head; loaded from ``siglip_path`` on first need.
    intra_llm: run LLaVA-Video's intra-LLM stage (only for llava_video, with Tango at r < 1).
    intra_llm_layer: K, first layer on the shortened sequence (default 18 of 28, scaled to the
        model's depth). intra_llm_keep_ratio: p. intra_llm_merge_weight: weight of the pooled feature.
    intra_llm_reference_bug: reproduce the reference's bidirectional layer K-1 (opt-in, spec 6).
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
        intra_llm: bool = True,
        intra_llm_layer: Optional[int] = None,
        intra_llm_keep_ratio: float = 0.5,
        intra_llm_merge_weight: float = 0.4,
        intra_llm_reference_bug: bool = False,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> None:
        super().__init__(tango)
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
        self.family = family
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.num_frames = int(num_frames) if num_frames is not None else DEFAULT_NUM_FRAMES[family]
        self.saliency_head = saliency_head
        self.siglip_path = siglip_path
        self.system_prompt = system_prompt
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        num_layers = int(config.text_config.num_hidden_layers)
        self.intra_llm = bool(intra_llm)
        self.intra_llm_layer = default_intra_llm_layer(num_layers) if intra_llm_layer is None else int(intra_llm_layer)
        self.intra_llm_keep_ratio = float(intra_llm_keep_ratio)
        self.intra_llm_merge_weight = float(intra_llm_merge_weight)
        self.intra_llm_reference_bug = bool(intra_llm_reference_bug)
        if family == "llava_video" and self.intra_llm and not 1 <= self.intra_llm_layer < num_layers:
            raise ValueError(f"intra_llm_layer must be in [1, {num_layers - 1}], got {self.intra_llm_layer}.")
        vision = config.vision_config
        self.patch_grid = int(vision.image_size) // int(vision.patch_size)
        self.stop_token_ids = self._stop_tokens()

    # ------------------------------------------------------------------ construction

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

        dtype: default float16 on CUDA (the paper's), float32 on CPU. device: default CUDA when available. attn_implementation:
        default ``flash_attention_2`` if importable, else ``sdpa``. family: default from the config's
        ``tango_family`` key, else ``llava_video`` when the path names LLaVA-Video, else OneVision.
        siglip_path: SigLIP checkpoint with the attention-pooling head (default: the config's
        ``tango_siglip`` key, relative to the model directory, else google/siglip-so400m-patch14-384).
        config: the checkpoint's already loaded config (read from ``path`` when None).
        Other keyword arguments go to the constructor (num_frames, intra_llm_layer, ...).
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

    # ------------------------------------------------------------------ small helpers

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model."""
        return self.model.dtype

    @property
    def prunes(self) -> bool:
        """Whether Tango actually removes tokens (configured and r < 1)."""
        return self.tango is not None and self.tango.retention_ratio < 1.0

    @property
    def uses_intra_llm(self) -> bool:
        """Whether prefill runs the intra-LLM stage (LLaVA-Video, enabled, pruning)."""
        return self.family == "llava_video" and self.intra_llm and self.prunes

    def _stop_tokens(self) -> List[int]:
        """Token ids that end generation: ``<|im_end|>`` and the tokenizer's eos."""
        ids = set()
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            ids.add(im_end)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return sorted(ids)

    def _sync(self) -> None:
        """Wait for queued device work so wall times are honest."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _get_saliency_head(self) -> SiglipSaliencyHead:
        """The SigLIP head, loaded on first use in the model's dtype and device."""
        if self.saliency_head is None:
            self.saliency_head = SiglipSaliencyHead.from_pretrained(self.siglip_path, dtype=self.dtype, device=self.device)
        return self.saliency_head

    # ------------------------------------------------------------------ prompt

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
        """(T,) int64 ids of ``text`` without added special tokens, on the model's device."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ vision

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (T, 3, S, S) pixels: bicubic squash-resize, /255, (x - mean) / std."""
        size = int(self.model.config.vision_config.image_size)
        if frames.shape[1:3] != (size, size):
            frames = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in frames])
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.image_mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=self.device).view(1, 3, 1, 1)
        pixels = (pixels * (1.0 / 255.0) - mean) / std
        return pixels.to(self.dtype)

    def vision_hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, P, Dv) hidden states of ``vision_feature_layer`` (before post_layernorm).

        Runs the encoder only up to that layer (the same modules and order as the full tower).
        """
        tower = self.model.model.vision_tower
        layers = tower.encoder.layers
        index = int(self.model.config.vision_feature_layer)
        stop = index if index >= 0 else len(layers) + 1 + index  # hidden_states[0] is the embedding output
        if not 0 <= stop <= len(layers):
            raise ValueError(f"vision_feature_layer {index} is out of range for a tower of {len(layers)} layers.")
        hidden = tower.embeddings(pixels)
        for layer in layers[:stop]:
            hidden = layer(hidden, None)
        return hidden

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

    # ------------------------------------------------------------------ prepare

    @torch.no_grad()
    def prepare_inputs(self, video: VideoSource, question: str) -> LlavaInputs:
        """Sample the video, run the vision side and Tango, and splice the video into the prompt."""
        stats = TangoStats()
        start = time.perf_counter()
        clip = to_clip(video, num_frames=self.num_frames)
        pixels = self.preprocess(clip.frames)
        self._sync()
        stats.times_ms["load"] = (time.perf_counter() - start) * 1000.0

        start = time.perf_counter()
        hidden = self.vision_hidden_states(pixels)  # (N, P, Dv)
        head_out = None
        if self.prunes:
            fastvid = self.tango.segmenter == "fastvid"
            head_out = self._get_saliency_head()(hidden, with_pooled=fastvid)
        self._sync()
        stats.times_ms["vit"] = (time.perf_counter() - start) * 1000.0

        start = time.perf_counter()
        projected = self.model.model.multi_modal_projector(hidden)  # (N, P, D)
        features, grid = self.pool_features(projected)
        num_frames, per_frame, dim = features.shape
        if head_out is not None:
            saliency = self.pool_saliency(head_out.attention)
            timestamps = torch.as_tensor(np.asarray(clip.timestamps, dtype=np.float32), device=self.device)
            result = tango_prune(
                features, saliency, grid, timestamps=timestamps, config=self.tango, global_features=head_out.pooled
            )
            keep_index, kept = result.keep_index.to(self.device), result.kept_features.to(features.dtype)
            stats.segments = result.segments
        else:
            keep_index = torch.arange(num_frames * per_frame, device=self.device)
            kept = features.reshape(num_frames * per_frame, dim)
        video_embeds = self.video_layout(keep_index, kept, grid)

        before, after = self.prompt_parts(question, clip)
        embed = self.model.get_input_embeddings()
        pre_ids, post_ids = self._tokenize(before), self._tokenize(after)
        inputs_embeds = torch.cat([embed(pre_ids), video_embeds.to(self.dtype), embed(post_ids)], dim=0)[None]
        self._sync()
        stats.times_ms["prune"] = (time.perf_counter() - start) * 1000.0

        stats.num_frames = num_frames
        stats.visual_tokens_before = num_frames * per_frame
        stats.visual_tokens_after = int(video_embeds.shape[0])
        return LlavaInputs(
            inputs_embeds=inputs_embeds,
            visual_start=int(pre_ids.numel()),
            visual_length=int(video_embeds.shape[0]),
            keep_index=keep_index,
            grid=grid,
            clip=clip,
            stats=stats,
        )

    # ------------------------------------------------------------------ language model

    def _runner(self):
        """The intra-LLM runner over the model's Qwen2 language model."""
        from .qwen2_intra_llm import IntraLLMQwen2Runner

        return IntraLLMQwen2Runner(
            self.model.model.language_model,
            prune_layer=self.intra_llm_layer,
            keep_ratio=self.intra_llm_keep_ratio,
            merge_weight=self.intra_llm_merge_weight,
            reference_bidirectional_bug=self.intra_llm_reference_bug,
        )

    @torch.no_grad()
    def prefill(self, inputs: LlavaInputs):
        """Run the prompt through the LLM. Returns (last hidden (1, D) after the final norm, state, runner)."""
        start = time.perf_counter()
        if self.uses_intra_llm:
            runner = self._runner()
            visual_end = inputs.visual_start + inputs.visual_length
            hidden, state = runner.prefill(inputs.inputs_embeds, None, inputs.visual_start, visual_end)
            inputs.stats.visual_tokens_after_intra_llm = int(state.num_visual_kept)
        else:
            runner = None
            output = self.model.model.language_model(inputs_embeds=inputs.inputs_embeds, use_cache=True)
            hidden, state = output.last_hidden_state, output.past_key_values
        self._sync()
        inputs.stats.times_ms["prefill"] = (time.perf_counter() - start) * 1000.0
        return hidden[:, -1], state, runner

    @torch.no_grad()
    def _decode_step(self, token: torch.Tensor, state, runner):
        """Feed one token (1,) -> (hidden (1, D), state)."""
        token_embeds = self.model.get_input_embeddings()(token[:, None])  # (1, 1, D)
        if runner is not None:
            hidden, state = runner.decode_step(token_embeds, state)
        else:
            output = self.model.model.language_model(inputs_embeds=token_embeds, past_key_values=state, use_cache=True)
            hidden, state = output.last_hidden_state, output.past_key_values
        return hidden[:, -1], state

    @torch.no_grad()
    def first_token_logits(self, video: VideoSource, question: str) -> torch.Tensor:
        """Logits (vocab,) float32 of the first answer token."""
        inputs = self.prepare_inputs(video, question)
        hidden, _, _ = self.prefill(inputs)
        return self.model.lm_head(hidden)[0].float()

    @torch.no_grad()
    def generate_from_inputs(self, inputs: LlavaInputs, max_new_tokens: int = 16) -> TangoGeneration:
        """Greedy decoding from prepared inputs; stops after ``<|im_end|>`` / eos (included in token_ids)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        hidden, state, runner = self.prefill(inputs)
        start = time.perf_counter()
        stop = torch.tensor(self.stop_token_ids, device=self.device, dtype=torch.long)
        tokens: List[torch.Tensor] = []
        for step in range(max_new_tokens):
            token = self.model.lm_head(hidden).argmax(dim=-1)  # (1,)
            tokens.append(token)
            if step == max_new_tokens - 1 or bool(torch.isin(token, stop).item()):
                break
            hidden, state = self._decode_step(token, state, runner)
        self._sync()
        inputs.stats.times_ms["decode"] = (time.perf_counter() - start) * 1000.0
        token_ids = torch.cat(tokens).cpu()
        text = self.tokenizer.decode(token_ids.tolist(), skip_special_tokens=True).strip()
        return TangoGeneration(text=text, token_ids=token_ids, stats=inputs.stats)

    @answer_without_autograd
    def generate(self, video: VideoSource, question: str, max_new_tokens: int = 16, **kwargs) -> TangoGeneration:
        """Answer ``question`` about ``video`` greedily (at most ``max_new_tokens`` tokens)."""
        if kwargs:
            raise TypeError(f"Unexpected arguments for LlavaTango.generate: {sorted(kwargs)}.")
        return self.generate_from_inputs(self.prepare_inputs(video, question), max_new_tokens)


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

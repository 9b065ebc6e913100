"""Tango in Qwen2.5-VL (spec section 5, "Qwen2.5-VL-7B").

The wrapped model is transformers' ``Qwen2_5_VLForConditionalGeneration``, unmodified: Tango reads
the last ViT block's queries and keys through forward hooks, prunes the LLM-side video embeddings
and runs the language model on the shortened sequence with the original 3-D M-RoPE positions.

Pipeline of one call:

1. Frames: sampled like qwen-vl-utils' ``fetch_video`` (2 fps, 4..128 frames, an even count; an
   explicit ``num_frames`` overrides), resized to multiples of 28 within the pixel bounds (bicubic,
   antialiased, rounded to uint8 values like torchvision), normalised and cut into the processor's
   patch rows (done here in torch: the transformers video processor needs torchvision).
2. Prompt: the chat template's default system prompt, the video, then the question.
3. ViT -> merger -> video embeddings ``F`` (grid_t, L, D); saliency ``S`` (grid_t, L) from the last
   (full-attention) ViT block; timestamps of the temporal patches.
4. ``get_rope_index`` on the full sequence; ``tango_prune``; the pruned video tokens are dropped
   from embeddings, position ids and attention mask; decoding continues from the full sequence's
   positions (its ``rope_deltas``).

Generation is plain greedy (argmax, repetition penalty 1.0) in both paths: ``tango=None`` calls the
model's own ``generate`` with sampling and penalties switched off; with Tango a KV-cached greedy
loop runs over the pruned prefill. At ``retention_ratio=1.0`` both give identical logits and tokens.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TangoConfig
from .base import TangoGeneration, TangoStats, TangoVideoLM, VideoClip, VideoSource, answer_without_autograd
from .video import check_frames, probe_video, read_frames

# qwen-vl-utils' video constants (fetch_video / smart_nframes).
IMAGE_FACTOR: int = 28
FRAME_FACTOR: int = 2
VIDEO_MIN_PIXELS: int = 128 * 28 * 28
VIDEO_MAX_PIXELS: int = 768 * 28 * 28
VIDEO_TOTAL_PIXELS: int = int(128000 * 28 * 28 * 0.9)
DEFAULT_FPS: float = 2.0
DEFAULT_MIN_FRAMES: int = 4
DEFAULT_MAX_FRAMES: int = 128
MAX_ASPECT_RATIO: float = 200.0

# Processor defaults of Qwen2.5-VL (preprocessor_config.json), used when a checkpoint lacks the file.
PROCESSOR_MIN_PIXELS: int = 56 * 56
PROCESSOR_MAX_PIXELS: int = 28 * 28 * 1280
CLIP_MEAN: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------------
# Frame sampling and resizing (qwen-vl-utils' rules)


def _round_by(number: float, factor: int) -> int:
    return round(number / factor) * factor


def _ceil_by(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def _floor_by(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: float) -> Tuple[int, int]:
    """Height and width divisible by ``factor``, area within [min_pixels, max_pixels], aspect kept."""
    if min(height, width) <= 0:
        raise ValueError(f"Frames have an empty size {height}x{width}.")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"Frame aspect ratio must be below {MAX_ASPECT_RATIO:g}, got {height}x{width}."
        )
    h_bar = max(factor, _round_by(height, factor))
    w_bar = max(factor, _round_by(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, _floor_by(height / beta, factor))
        w_bar = max(factor, _floor_by(width / beta, factor))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = _ceil_by(height * beta, factor)
        w_bar = _ceil_by(width * beta, factor)
    return h_bar, w_bar


def qwen_num_frames(
    total_frames: int,
    video_fps: float,
    num_frames: Optional[int] = None,
    fps: float = DEFAULT_FPS,
    min_frames: int = DEFAULT_MIN_FRAMES,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> int:
    """How many frames qwen-vl-utils samples from a video of ``total_frames`` at ``video_fps``.

    ``num_frames`` (a dataset's nframe) overrides the fps rule; when the video is shorter it is
    first rounded down to an even count (VLMEvalKit), then rounded to the frame factor 2.
    Otherwise ``total / video_fps * fps`` clamped to [min_frames, max_frames] and the video
    length, floored to even.
    """
    if total_frames <= 0:
        raise ValueError(f"The video has {total_frames} frames; nothing to sample.")
    if num_frames is not None:
        wanted = int(num_frames)
        if wanted <= 0:
            raise ValueError(f"num_frames must be positive, got {num_frames!r}.")
        if total_frames < wanted:
            wanted = total_frames // FRAME_FACTOR * FRAME_FACTOR
        count = _round_by(wanted, FRAME_FACTOR)
    else:
        low = _ceil_by(min_frames, FRAME_FACTOR)
        high = _floor_by(min(max_frames, total_frames), FRAME_FACTOR)
        count = total_frames / video_fps * fps
        count = min(min(max(count, low), high), total_frames)
        count = _floor_by(count, FRAME_FACTOR)
    if not (FRAME_FACTOR <= count <= total_frames):
        raise ValueError(
            f"Cannot sample an even number of frames (at least {FRAME_FACTOR}) from a video of "
            f"{total_frames} frame(s); got {count}. Qwen2.5-VL needs at least {FRAME_FACTOR} frames."
        )
    return int(count)


def qwen_frame_indices(total_frames: int, count: int) -> np.ndarray:
    """``linspace(0, total - 1, count)`` rounded (torch, half to even), as qwen-vl-utils: (count,) int64."""
    return torch.linspace(0, total_frames - 1, count).round().long().numpy()


def frame_pixel_bounds(
    num_frames: int,
    min_pixels: Optional[int] = None,
    max_pixels: Optional[int] = None,
    total_pixels: Optional[int] = None,
) -> Tuple[int, float]:
    """Per-frame (min, max) pixels of qwen-vl-utils for a clip of ``num_frames`` frames.

    max = max(min(768*28*28, total / num_frames * 2), int(1.05 * min)), then capped by an explicit
    ``max_pixels``.
    """
    low = VIDEO_MIN_PIXELS if min_pixels is None else int(min_pixels)
    total = VIDEO_TOTAL_PIXELS if total_pixels is None else int(total_pixels)
    high = max(min(VIDEO_MAX_PIXELS, total / num_frames * FRAME_FACTOR), int(low * 1.05))
    if max_pixels is not None:
        high = min(float(max_pixels), high)
    return low, high


def resize_frames(frames: torch.Tensor, height: int, width: int, round_to_uint8: bool) -> torch.Tensor:
    """Bicubic antialiased resize of (T, 3, H, W) float frames to (T, 3, height, width).

    ``round_to_uint8`` clamps to [0, 255] and rounds, as torchvision does for uint8 input.
    """
    if frames.shape[-2:] == (height, width):
        return frames
    out = F.interpolate(frames, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    if round_to_uint8:
        out = out.clamp_(0.0, 255.0).round_()
    return out


def patchify_video(
    frames: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """Normalise (T, C, H, W) frames in [0, 255] and cut them into Qwen2-VL patch rows.

    Returns pixel rows (grid_t * grid_h * grid_w, C * temporal_patch * patch * patch) float32 in the
    processor's order (temporal patch, merge-block row, merge-block column, row in block, column
    in block; inside a row: channel, frame, pixel row, pixel column) and (grid_t, grid_h, grid_w).
    """
    frames = frames.float()
    num, channels, height, width = frames.shape
    if num % temporal_patch_size:
        pad = temporal_patch_size - num % temporal_patch_size
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)], dim=0)
        num += pad
    mean_t = torch.tensor(mean, dtype=torch.float32, device=frames.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=frames.device).view(1, -1, 1, 1)
    frames = (frames * (1.0 / 255.0) - mean_t) / std_t
    grid_t, grid_h, grid_w = num // temporal_patch_size, height // patch_size, width // patch_size
    if grid_h % merge_size or grid_w % merge_size:
        raise ValueError(f"Frame size {height}x{width} is not a multiple of {patch_size * merge_size}.")
    patches = frames.reshape(
        grid_t, temporal_patch_size, channels,
        grid_h // merge_size, merge_size, patch_size,
        grid_w // merge_size, merge_size, patch_size,
    )
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    rows = patches.reshape(grid_t * grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)
    return rows.contiguous(), (grid_t, grid_h, grid_w)


def patch_timestamps(frame_times: np.ndarray, grid_t: int) -> np.ndarray:
    """Frame times interpolated onto the temporal patches: ``interp(linspace(0, n-1, grid_t), arange(n), t)``."""
    n = len(frame_times)
    return np.interp(np.linspace(0, n - 1, grid_t), np.arange(n), np.asarray(frame_times, dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# Saliency from the last ViT block


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def vision_qk(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotated queries and keys of a Qwen2.5-VL ViT block, as its attention computes them.

    qkv: (P, 3 * dim) output of ``attn.qkv``; cos, sin: (P, head_dim) rotary tables (window order).
    Returns q, k (P, heads, head_dim) in qkv's dtype (rotation done in float32, like the model).
    """
    seq = qkv.shape[0]
    q, k, _ = qkv.reshape(seq, 3, num_heads, -1).unbind(1)
    cos32, sin32 = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    q_rot = (q.float() * cos32 + _rotate_half(q.float()) * sin32).to(qkv.dtype)
    k_rot = (k.float() * cos32 + _rotate_half(k.float()) * sin32).to(qkv.dtype)
    return q_rot, k_rot


def merged_token_saliency(
    q: torch.Tensor, k: torch.Tensor, grid_t: int, merge_unit: int, window_index: torch.Tensor
) -> torch.Tensor:
    """Per-temporal-patch attention of the mean query over the merged tokens, in LLM token order.

    q, k: (P, heads, head_dim) in window order, P = grid_t * L * merge_unit. For each temporal
    patch and head: mean query over its P / grid_t patches against the mean key of each merge unit
    (``merge_unit`` consecutive patches), ``softmax(q . k / sqrt(head_dim))`` in float32 over the
    L units, then mean over heads. ``window_index`` (grid_t * L,) maps window order to LLM order.
    Returns (grid_t, L) float32, each row summing to 1.
    """
    num_patches, heads, head_dim = q.shape
    units = num_patches // merge_unit // grid_t
    q_mean = q.float().reshape(grid_t, units * merge_unit, heads, head_dim).mean(dim=1)  # (T, h, d)
    k_mean = k.float().reshape(grid_t, units, merge_unit, heads, head_dim).mean(dim=2)  # (T, L, h, d)
    logits = torch.einsum("thd,tlhd->thl", q_mean, k_mean) / math.sqrt(head_dim)
    attn = torch.softmax(logits, dim=-1, dtype=torch.float32).mean(dim=1)  # (T, L) window order
    flat = torch.empty_like(attn.reshape(-1))
    flat[window_index.to(flat.device)] = attn.reshape(-1)
    return flat.reshape(grid_t, units)


class _SaliencyProbe:
    """Forward hooks on the last ViT block that compute the merged-token saliency (read-only)."""

    def __init__(self, visual: torch.nn.Module, grid_thw: torch.Tensor) -> None:
        depth = len(visual.blocks)
        if (depth - 1) not in set(int(i) for i in visual.fullatt_block_indexes):
            raise ValueError(
                f"Tango's Qwen2.5-VL saliency needs the last ViT block ({depth - 1}) to be a full-attention "
                f"block; fullatt_block_indexes = {list(visual.fullatt_block_indexes)}."
            )
        from transformers.vision_utils import get_vision_window_index

        self.block = visual.blocks[-1]
        self.num_heads = int(self.block.attn.num_heads)
        self.merge_unit = int(visual.spatial_merge_unit)
        self.grid_t = int(grid_thw[0, 0])
        self.window_index, _ = get_vision_window_index(
            grid_thw.cpu(), visual.spatial_merge_size, visual.window_size, visual.patch_size
        )
        self.rotary: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self.saliency: Optional[torch.Tensor] = None
        self.handles: List[Any] = []

    def _pre_attn(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.rotary = kwargs["position_embeddings"]

    def _post_qkv(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self.rotary is None:
            raise RuntimeError("The ViT's last block ran without rotary position embeddings.")
        q, k = vision_qk(output.detach(), self.rotary[0], self.rotary[1], self.num_heads)
        self.saliency = merged_token_saliency(q, k, self.grid_t, self.merge_unit, self.window_index)

    @contextmanager
    def attached(self) -> Iterator["_SaliencyProbe"]:
        """Hooks installed for the duration of the ``with`` block."""
        self.handles = [
            self.block.attn.register_forward_pre_hook(self._pre_attn, with_kwargs=True),
            self.block.attn.qkv.register_forward_hook(self._post_qkv),
        ]
        try:
            yield self
        finally:
            for handle in self.handles:
                handle.remove()
            self.handles = []


# ---------------------------------------------------------------------------------------------
# The adapter


@dataclass
class QwenVideoInputs:
    """Processor-equivalent inputs for one (video, question) pair.

    input_ids / attention_mask / mm_token_type_ids: (1, S); pixel_values_videos: (P, C*2*14*14)
    float32; video_grid_thw: (1, 3); second_per_grid_ts: (1,) always 1.0; clip: the sampled frames.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor
    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor
    second_per_grid_ts: torch.Tensor
    clip: VideoClip

    def model_kwargs(self) -> Dict[str, torch.Tensor]:
        """Keyword arguments for the unmodified model's ``forward`` / ``generate``."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "mm_token_type_ids": self.mm_token_type_ids,
            "pixel_values_videos": self.pixel_values_videos,
            "video_grid_thw": self.video_grid_thw,
            "second_per_grid_ts": self.second_per_grid_ts,
        }


@dataclass
class QwenPrefill:
    """The (possibly pruned) LLM input of one call.

    inputs_embeds: (1, S', D); position_ids: (3, 1, S') original M-RoPE ids of the kept tokens;
    attention_mask: (1, S'); full_length: S of the unpruned sequence; rope_deltas: (1, 1) of the
    full sequence. features (grid_t, L, D) and saliency (grid_t, L) are Tango's inputs,
    timestamps (grid_t,) seconds, grid (h/2, w/2); keep_index (K,) the kept flat video tokens;
    video_positions (Nv,) where the video tokens sit in the full sequence.
    """

    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    full_length: int
    rope_deltas: torch.Tensor
    features: torch.Tensor
    saliency: Optional[torch.Tensor]
    timestamps: torch.Tensor
    grid: Tuple[int, int]
    keep_index: torch.Tensor
    video_positions: torch.Tensor
    stats: TangoStats = field(default_factory=TangoStats)


class _Timer:
    """Wall-clock stage timer that synchronises CUDA around each stage."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.times_ms: Dict[str, float] = {}

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.times_ms[name] = self.times_ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3


def _flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _read_json(path: str, name: str) -> Optional[dict]:
    """``name`` from a local directory or a (cached) hub repo, or None when absent."""
    local = os.path.join(path, name)
    if os.path.isdir(path):
        if not os.path.isfile(local):
            return None
        with open(local) as fh:
            return json.load(fh)
    from transformers.utils import cached_file

    resolved = cached_file(path, name, _raise_exceptions_for_missing_entries=False)
    if resolved is None:
        return None
    with open(resolved) as fh:
        return json.load(fh)


class Qwen25VLTango(TangoVideoLM):
    """Qwen2.5-VL with Tango before the LLM (``tango=None``: the unmodified model).

    ``num_frames``: a dataset's fixed frame count (overrides the 2 fps rule); ``fps``,
    ``min_frames``, ``max_frames``: the fps rule; ``video_min_pixels``, ``video_max_pixels``,
    ``video_total_pixels``: qwen-vl-utils' per-video pixel bounds (its defaults when None);
    ``processor_min_pixels`` / ``processor_max_pixels``, ``image_mean`` / ``image_std``: the
    processor configuration (from ``preprocessor_config.json`` in :meth:`from_pretrained`).
    """

    family = "qwen2_5_vl"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        tango: Optional[TangoConfig] = None,
        *,
        chat_template: Optional[str] = None,
        num_frames: Optional[int] = None,
        fps: float = DEFAULT_FPS,
        min_frames: int = DEFAULT_MIN_FRAMES,
        max_frames: int = DEFAULT_MAX_FRAMES,
        video_min_pixels: Optional[int] = None,
        video_max_pixels: Optional[int] = None,
        video_total_pixels: Optional[int] = None,
        processor_min_pixels: int = PROCESSOR_MIN_PIXELS,
        processor_max_pixels: int = PROCESSOR_MAX_PIXELS,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__(tango)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.chat_template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
        if not self.chat_template:
            raise ValueError("No chat template: pass chat_template= or use a tokenizer that carries one.")
        vision = model.config.vision_config
        self.patch_size = int(vision.patch_size)
        self.temporal_patch_size = int(vision.temporal_patch_size)
        self.merge_size = int(vision.spatial_merge_size)
        self.video_token_id = int(model.config.video_token_id)
        self.num_frames = num_frames
        self.fps = float(fps)
        self.min_frames = int(min_frames)
        self.max_frames = int(max_frames)
        self.video_min_pixels = video_min_pixels
        self.video_max_pixels = video_max_pixels
        self.video_total_pixels = video_total_pixels
        self.processor_min_pixels = int(processor_min_pixels)
        self.processor_max_pixels = int(processor_max_pixels)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_token_ids: Tuple[int, ...] = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
        pad = model.generation_config.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_ids[0]

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        tango: Optional[TangoConfig] = None,
        dtype: Optional[torch.dtype] = None,
        device: Optional[str] = None,
        attn_implementation: Optional[str] = None,
        **kw: Any,
    ) -> "Qwen25VLTango":
        """Load model, tokenizer and processor settings from ``path`` (local dir or hub id).

        dtype: bf16 on CUDA, fp32 on CPU by default. device: CUDA when available. attn:
        "flash_attention_2" when flash_attn is installed and the device is CUDA, else "sdpa".
        ``kw``: the constructor's keyword options (frame sampling, pixel bounds); anything else
        goes to ``Qwen2_5_VLForConditionalGeneration.from_pretrained``.
        """
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        option_names = (
            "chat_template", "num_frames", "fps", "min_frames", "max_frames", "video_min_pixels",
            "video_max_pixels", "video_total_pixels", "processor_min_pixels", "processor_max_pixels",
            "image_mean", "image_std",
        )
        options = {name: kw.pop(name) for name in option_names if name in kw}
        target = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
        if attn_implementation is None:
            attn_implementation = "flash_attention_2" if (target.type == "cuda" and _flash_attn_available()) else "sdpa"
        load_kw: Dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation, **kw}
        if target.type == "cuda":
            load_kw.setdefault("device_map", {"": str(target)})
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, **load_kw)
        if target.type != "cuda":
            model = model.to(target)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if "chat_template" not in options and not getattr(tokenizer, "chat_template", None):
            template = _read_json(path, "chat_template.json")
            if template is not None:
                options["chat_template"] = template["chat_template"]
        processor = _read_json(path, "preprocessor_config.json") or _read_json(path, "video_preprocessor_config.json") or {}
        size = processor.get("size") or {}
        options.setdefault("processor_min_pixels", processor.get("min_pixels", size.get("shortest_edge", PROCESSOR_MIN_PIXELS)))
        options.setdefault("processor_max_pixels", processor.get("max_pixels", size.get("longest_edge", PROCESSOR_MAX_PIXELS)))
        options.setdefault("image_mean", processor.get("image_mean", CLIP_MEAN))
        options.setdefault("image_std", processor.get("image_std", CLIP_STD))
        return cls(model, tokenizer, tango, **options)

    @property
    def device(self) -> torch.device:
        return self.model.model.language_model.embed_tokens.weight.device

    # -- video and prompt ----------------------------------------------------------------------

    def load_clip(self, video: VideoSource, num_frames: Optional[int] = None) -> VideoClip:
        """Sample the frames Qwen2.5-VL sees (an even count of at least 2).

        A path is sampled with :func:`qwen_num_frames` (``num_frames`` or the instance's default
        overrides the fps rule); an array, frame list or VideoClip is used whole, its last frame
        repeated to an even count (qwen-vl-utils' rule for frame lists).
        """
        wanted = num_frames if num_frames is not None else self.num_frames
        if isinstance(video, (str, os.PathLike)):
            path = os.fspath(video)
            total, rate = probe_video(path)
            count = qwen_num_frames(total, rate, wanted, self.fps, self.min_frames, self.max_frames)
            indices = qwen_frame_indices(total, count)
            frames = read_frames(path, indices)
            clip = VideoClip(frames, indices.astype(np.float64) / rate, indices, rate, total)
        elif isinstance(video, VideoClip):
            clip = VideoClip(check_frames(video.frames), np.asarray(video.timestamps, dtype=np.float64),
                             np.asarray(video.frame_indices), video.source_fps, video.num_source_frames)
        else:
            if isinstance(video, (list, tuple)):
                if len(video) == 0:
                    raise ValueError("The video has zero frames (empty frame list); pass at least one frame.")
                video = np.stack([np.asarray(frame) for frame in video])
            frames = check_frames(video)
            indices = np.arange(frames.shape[0], dtype=np.int64)
            clip = VideoClip(frames, indices.astype(np.float64), indices, 1.0, frames.shape[0])
        pad = -clip.frames.shape[0] % FRAME_FACTOR
        if pad:
            last = np.full(pad, clip.frames.shape[0] - 1)
            keep = np.concatenate([np.arange(clip.frames.shape[0]), last])
            clip = VideoClip(clip.frames[keep], np.asarray(clip.timestamps)[keep], np.asarray(clip.frame_indices)[keep],
                             clip.source_fps, clip.num_source_frames)
        return clip

    def pixel_values(self, clip: VideoClip) -> Tuple[torch.Tensor, torch.Tensor]:
        """Resize, normalise and patchify a clip: pixel rows (P, C*2*14*14) float32 and grid (1, 3)."""
        frames = torch.from_numpy(np.ascontiguousarray(clip.frames)).to(self.device)
        frames = frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W) in [0, 255]
        height, width = frames.shape[-2:]
        factor = self.patch_size * self.merge_size
        low, high = frame_pixel_bounds(frames.shape[0], self.video_min_pixels, self.video_max_pixels, self.video_total_pixels)
        new_h, new_w = smart_resize(height, width, factor, low, high)
        frames = resize_frames(frames, new_h, new_w, round_to_uint8=True)
        proc_h, proc_w = smart_resize(new_h, new_w, factor, self.processor_min_pixels, self.processor_max_pixels)
        frames = resize_frames(frames, proc_h, proc_w, round_to_uint8=False)
        rows, grid = patchify_video(frames, self.image_mean, self.image_std, self.patch_size,
                                    self.temporal_patch_size, self.merge_size)
        return rows, torch.tensor([grid], dtype=torch.long, device=self.device)

    def prompt_ids(self, question: str, num_video_tokens: int) -> torch.Tensor:
        """Chat-template prompt with the video placeholder expanded: (1, S) token ids."""
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )
        ids = torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        is_video = ids == self.video_token_id
        if int(is_video.sum()) != 1:
            raise ValueError(
                f"The rendered prompt holds {int(is_video.sum())} video placeholders, expected 1; the chat "
                "template must render a video part as <|vision_start|><|video_pad|><|vision_end|> and the "
                "question must not contain <|video_pad|>."
            )
        counts = torch.where(is_video, num_video_tokens, 1)
        return ids.repeat_interleave(counts).unsqueeze(0).to(self.device)

    def prepare_inputs(self, video: VideoSource, question: str, num_frames: Optional[int] = None) -> QwenVideoInputs:
        """Frames, pixel rows and prompt of one call (what the processor would return)."""
        clip = self.load_clip(video, num_frames)
        pixels, grid_thw = self.pixel_values(clip)
        num_video_tokens = int(grid_thw.prod()) // (self.merge_size ** 2)
        input_ids = self.prompt_ids(question, num_video_tokens)
        mm_types = (input_ids == self.video_token_id).to(torch.int32) * 2
        return QwenVideoInputs(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            mm_token_type_ids=mm_types,
            pixel_values_videos=pixels,
            video_grid_thw=grid_thw,
            second_per_grid_ts=torch.ones(1, device=self.device),
            clip=clip,
        )

    # -- Tango prefill ---------------------------------------------------------------------------

    def encode_video(self, inputs: QwenVideoInputs, with_saliency: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Video embeddings (Nv, D) after the merger in LLM order and, if asked, saliency (grid_t, L)."""
        core = self.model.model
        if not with_saliency:
            out = core.get_video_features(inputs.pixel_values_videos, inputs.video_grid_thw)
            return torch.cat(out.pooler_output, dim=0), None
        probe = _SaliencyProbe(core.visual, inputs.video_grid_thw)
        with probe.attached():
            out = core.get_video_features(inputs.pixel_values_videos, inputs.video_grid_thw)
        if probe.saliency is None:
            raise RuntimeError("The saliency hooks did not fire; is the ViT's last block bypassed?")
        return torch.cat(out.pooler_output, dim=0), probe.saliency

    @torch.no_grad()
    def prepare_prefill(self, inputs: QwenVideoInputs, tango: Optional[TangoConfig]) -> QwenPrefill:
        """Embeddings, positions and mask the LLM sees, pruned by ``tango`` (None: unpruned)."""
        from ..prune import tango_prune

        timer = _Timer(self.device)
        core = self.model.model
        with timer.stage("vit"):
            video_embeds, saliency = self.encode_video(inputs, with_saliency=tango is not None)
        grid_t, grid_h, grid_w = (int(v) for v in inputs.video_grid_thw[0])
        grid = (grid_h // self.merge_size, grid_w // self.merge_size)
        with timer.stage("prune"):
            embeds = core.get_input_embeddings()(inputs.input_ids)
            video_embeds = video_embeds.to(embeds.device, embeds.dtype)
            video_positions = (inputs.input_ids[0] == self.video_token_id).nonzero().squeeze(1)
            embeds[0, video_positions] = video_embeds
            position_ids, rope_deltas = core.get_rope_index(
                inputs.input_ids,
                mm_token_type_ids=inputs.mm_token_type_ids,
                video_grid_thw=inputs.video_grid_thw,
                second_per_grid_ts=inputs.second_per_grid_ts,
                attention_mask=inputs.attention_mask,
            )
            features = video_embeds.reshape(grid_t, grid[0] * grid[1], -1)
            times = torch.from_numpy(patch_timestamps(np.asarray(inputs.clip.timestamps), grid_t)).to(self.device)
            full_length = int(inputs.input_ids.shape[1])
            attention_mask = inputs.attention_mask
            keep_index = torch.arange(video_positions.numel(), device=self.device)
            segments = None
            if tango is not None:
                result = tango_prune(features, saliency, grid, times, tango, None)
                keep_index, segments = result.keep_index.to(self.device), result.segments
                embeds[0, video_positions[keep_index]] = result.kept_features.to(embeds.device, embeds.dtype)
                keep = torch.ones(full_length, dtype=torch.bool, device=self.device)
                keep[video_positions] = False
                keep[video_positions[keep_index]] = True
                embeds = embeds[:, keep]
                position_ids = position_ids[:, :, keep]
                attention_mask = attention_mask[:, keep]
        stats = TangoStats(
            visual_tokens_before=int(video_positions.numel()),
            visual_tokens_after=int(keep_index.numel()),
            num_frames=int(inputs.clip.frames.shape[0]),
            times_ms=dict(timer.times_ms),
            segments=segments,
        )
        return QwenPrefill(
            inputs_embeds=embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            full_length=full_length,
            rope_deltas=rope_deltas,
            features=features,
            saliency=saliency,
            timestamps=times,
            grid=grid,
            keep_index=keep_index,
            video_positions=video_positions,
            stats=stats,
        )

    def prepare(self, video: VideoSource, question: str, num_frames: Optional[int] = None) -> QwenPrefill:
        """``prepare_inputs`` then ``prepare_prefill`` with this adapter's Tango configuration."""
        if self.tango is None:
            raise ValueError("prepare() builds Tango's pruned prefill; this adapter has tango=None.")
        return self.prepare_prefill(self.prepare_inputs(video, question, num_frames), self.tango)

    def decode_positions(self, prefill: QwenPrefill, step: int, count: int = 1) -> torch.Tensor:
        """M-RoPE ids (3, 1, count) of generated tokens ``step .. step+count-1`` (0: the first one)."""
        base = prefill.full_length + step + int(prefill.rope_deltas.reshape(-1)[0])
        pos = torch.arange(base, base + count, device=self.device)
        return pos.view(1, 1, -1).expand(3, 1, -1)

    @torch.no_grad()
    def greedy_decode(self, prefill: QwenPrefill, max_new_tokens: int) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, float]]:
        """Prefill then greedy decoding with a KV cache.

        Returns generated ids (n,), the logits of every step (n, vocab) float32 on CPU, and stage
        times ("prefill", "decode") in ms. Stops after an end-of-sequence id or ``max_new_tokens``.
        """
        timer = _Timer(self.device)
        with timer.stage("prefill"):
            out = self.model(
                inputs_embeds=prefill.inputs_embeds,
                position_ids=prefill.position_ids,
                attention_mask=prefill.attention_mask,
                use_cache=True,
                logits_to_keep=1,
            )
        step_logits = [out.logits[0, -1].float()]
        cache = out.past_key_values
        mask = prefill.attention_mask
        token = int(step_logits[0].argmax())
        generated = [token]
        with timer.stage("decode"):
            for step in range(1, max_new_tokens):
                if token in self.eos_token_ids:
                    break
                mask = torch.cat([mask, mask.new_ones((1, 1))], dim=1)
                out = self.model(
                    input_ids=torch.tensor([[token]], device=self.device),
                    position_ids=self.decode_positions(prefill, step - 1),
                    attention_mask=mask,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                cache = out.past_key_values
                step_logits.append(out.logits[0, -1].float())
                token = int(step_logits[-1].argmax())
                generated.append(token)
        logits = torch.stack(step_logits).cpu()
        return torch.tensor(generated, dtype=torch.long), logits, dict(timer.times_ms)

    # -- unmodified model ------------------------------------------------------------------------

    @contextmanager
    def _vanilla_timing(self, timer_ms: Dict[str, float]) -> Iterator[None]:
        """Hooks timing the ViT and the first (prefill) forward of the unmodified model."""
        cuda = self.device.type == "cuda"
        marks: Dict[str, float] = {}

        def now() -> float:
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def vit_pre(module, args, kwargs):
            marks["vit_start"] = now()

        def vit_post(module, args, kwargs, output):
            timer_ms["vit"] = timer_ms.get("vit", 0.0) + (now() - marks["vit_start"]) * 1e3

        def top_pre(module, args, kwargs):
            marks["call_start"] = now()

        def top_post(module, args, kwargs, output):
            elapsed = (now() - marks["call_start"]) * 1e3
            if "prefill" not in timer_ms:
                timer_ms["prefill"] = elapsed - timer_ms.get("vit", 0.0)
            else:
                timer_ms["decode"] = timer_ms.get("decode", 0.0) + elapsed

        visual = self.model.model.visual
        handles = [
            visual.register_forward_pre_hook(vit_pre, with_kwargs=True),
            visual.register_forward_hook(vit_post, with_kwargs=True),
            self.model.register_forward_pre_hook(top_pre, with_kwargs=True),
            self.model.register_forward_hook(top_post, with_kwargs=True),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # -- TangoVideoLM ----------------------------------------------------------------------------

    @answer_without_autograd
    def generate(self, video: VideoSource, question: str, max_new_tokens: int = 16, **kwargs: Any) -> TangoGeneration:
        """Greedy answer. kwargs: ``num_frames`` (a dataset's nframe) overrides the frame count."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        loading = _Timer(self.device)
        with loading.stage("load"):  # frame decoding and preprocessing, as the LLaVA adapter reports
            inputs = self.prepare_inputs(video, question, kwargs.pop("num_frames", None))
        if kwargs:
            raise TypeError(f"Unexpected arguments {sorted(kwargs)}.")
        if self.tango is None:
            times: Dict[str, float] = {}
            with self._vanilla_timing(times):
                sequences = self.model.generate(
                    **inputs.model_kwargs(),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    repetition_penalty=1.0,
                    eos_token_id=list(self.eos_token_ids),
                    pad_token_id=self.pad_token_id,
                )
            token_ids = sequences[0, inputs.input_ids.shape[1]:].cpu()
            num_video = int((inputs.input_ids == self.video_token_id).sum())
            stats = TangoStats(num_video, num_video, None, int(inputs.clip.frames.shape[0]), times)
        else:
            prefill = self.prepare_prefill(inputs, self.tango)
            token_ids, _, times = self.greedy_decode(prefill, max_new_tokens)
            stats = prefill.stats
            stats.times_ms.update(times)
        stats.times_ms.update(loading.times_ms)
        text = self.tokenizer.decode(token_ids.tolist(), skip_special_tokens=True)
        return TangoGeneration(text=text, token_ids=token_ids, stats=stats)

    @torch.no_grad()
    def first_token_logits(self, video: VideoSource, question: str, **kwargs: Any) -> torch.Tensor:
        """Logits (vocab,) float32 on CPU of the first generated token."""
        inputs = self.prepare_inputs(video, question, kwargs.pop("num_frames", None))
        if self.tango is None:
            out = self.model(**inputs.model_kwargs(), logits_to_keep=1)
            return out.logits[0, -1].float().cpu()
        prefill = self.prepare_prefill(inputs, self.tango)
        out = self.model(
            inputs_embeds=prefill.inputs_embeds,
            position_ids=prefill.position_ids,
            attention_mask=prefill.attention_mask,
            use_cache=False,
            logits_to_keep=1,
        )
        return out.logits[0, -1].float().cpu()

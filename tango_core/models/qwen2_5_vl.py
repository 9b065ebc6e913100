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

Decoding is the shared greedy decoder (:mod:`tango_core.models.base`), from the full
sequence's positions. At ``retention_ratio=1.0`` (or ``tango=None``) no saliency is computed and
nothing is dropped: logits and tokens equal the unmodified model's ``forward`` and ``generate``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TangoConfig
from .base import DECODING, KeptTokens, check_option, Prefill, StageTimer, TangoStats, TangoVideoLM, VideoClip, VideoSource, VisualTokens
from . import vision_attention
from .fast_blocks import FastBlocks
from .video import check_frames, probe_video, read_frames

VISION_ATTENTION: Tuple[str, ...] = ("auto", "batched", "transformers")
VISION_BLOCKS: Tuple[str, ...] = ("auto", "compiled", "padded", "transformers")
GRID_CACHE_SIZE = 16  # video grids whose ViT tables and M-RoPE block an adapter keeps (oldest dropped first)

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
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(frames.device, non_blocking=True)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(frames.device, non_blocking=True)
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

    def __init__(self, visual: torch.nn.Module, grid: Tuple[int, int, int], window_index: Optional[torch.Tensor] = None) -> None:
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
        self.grid_t = int(grid[0])
        if window_index is None:
            host_grid = torch.tensor([list(grid)], dtype=torch.long)
            window_index, _ = get_vision_window_index(host_grid, visual.spatial_merge_size, visual.window_size, visual.patch_size)
        self.window_index = window_index
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
    """Processor-equivalent inputs for one (video, question) pair (what the unmodified model takes).

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
class QwenText:
    """The prompt side of one call, made before the ViT's output is needed: ids (1, S), mask
    (1, S), M-RoPE ids (3, 1, S) and deltas (1, 1) of the full sequence, the video tokens'
    positions (Nv,; one contiguous run) on the device; on the host the video's start and the first
    new token's M-RoPE id."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    rope_deltas: torch.Tensor
    video_positions: torch.Tensor
    visual_start: int
    first_new_position: int


@dataclass
class QwenPrefill(Prefill):
    """The (possibly pruned) LLM input of one call.

    position_ids: (3, 1, S') original M-RoPE ids of the kept tokens; attention_mask: (1, S');
    full_length: S of the unpruned sequence; rope_deltas: (1, 1) of the full sequence;
    video_positions: (Nv,) where the video tokens sit in the full sequence; visual: Tango's inputs
    (features (grid_t, L, D), saliency (grid_t, L), timestamps of the temporal patches, grid).
    """

    position_ids: Optional[torch.Tensor] = None
    attention_mask: Optional[torch.Tensor] = None
    full_length: int = 0
    rope_deltas: Optional[torch.Tensor] = None
    video_positions: Optional[torch.Tensor] = None
    visual: Optional[VisualTokens] = None
    first_new_position: int = 0  # M-RoPE id of the first generated token: full_length + rope_deltas

    @property
    def features(self) -> torch.Tensor:
        return self.visual.features

    @property
    def saliency(self) -> Optional[torch.Tensor]:
        return self.visual.saliency

    @property
    def timestamps(self) -> torch.Tensor:
        return self.visual.timestamps

    @property
    def grid(self) -> Tuple[int, int]:
        return self.visual.grid


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
    ``vision_attention``: ``"batched"`` runs all of the ViT's attention windows in one call per
    layer (:mod:`~tango_core.models.vision_attention`), ``"transformers"`` its per-window loop
    under sdpa, ``"auto"`` (default) batched on CUDA. ``vision_blocks``: ``"padded"`` runs the
    ViT's MLPs at a width of a multiple of 64 (3420 -> 3456: aligned matrix products, the same
    sums), ``"compiled"`` also ``torch.compile``-s every ViT block but the last (whose hooks give the
    saliency; a few seconds on the first call of each video size), ``"transformers"`` the blocks as
    they are, ``"auto"`` (default) compiled on CUDA (:mod:`~tango_core.models.fast_blocks`).
    ``decoding``: see :meth:`~tango_core.models.base.TangoVideoLM._static_decoding`.
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
        vision_attention: str = "auto",
        vision_blocks: str = "auto",
        decoding: str = "auto",
    ) -> None:
        check_option("decoding", decoding, DECODING)
        check_option("vision_attention", vision_attention, VISION_ATTENTION)
        check_option("vision_blocks", vision_blocks, VISION_BLOCKS)
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
        super().__init__(model, tokenizer, tango, stop_token_ids=eos_ids)
        self.eos_token_ids = eos_ids
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
        self.vision_attention = vision_attention
        self.vision_blocks = vision_blocks
        self._fast_blocks: Optional[FastBlocks] = None
        self._vision_table_cache: Dict[tuple, Dict[str, Any]] = {}
        self._video_rope_cache: Dict[Tuple[int, int, int], Tuple[torch.Tensor, int]] = {}
        self.decoding = decoding

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
            "image_mean", "image_std", "vision_attention", "vision_blocks", "decoding",
        )
        if "siglip_path" in kw:
            raise ValueError("siglip_path applies to the LLaVA families only; Qwen2.5-VL takes saliency from its own ViT.")
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
            clip = VideoClip(frames, indices.astype(np.float64) / rate, indices, rate, total, source=path)
        elif isinstance(video, VideoClip):
            clip = VideoClip(check_frames(video.frames), np.asarray(video.timestamps, dtype=np.float64),
                             np.asarray(video.frame_indices), video.source_fps, video.num_source_frames, video.source)
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
                             clip.source_fps, clip.num_source_frames, clip.source)
        return clip

    def _resize_plan(self, num_frames: int, height: int, width: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """The two resizes of a clip: qwen-vl-utils' (per-video pixel bounds), then the processor's."""
        factor = self.patch_size * self.merge_size
        low, high = frame_pixel_bounds(num_frames, self.video_min_pixels, self.video_max_pixels, self.video_total_pixels)
        first = smart_resize(height, width, factor, low, high)
        return first, smart_resize(first[0], first[1], factor, self.processor_min_pixels, self.processor_max_pixels)

    def pixel_values(self, clip: VideoClip) -> Tuple[torch.Tensor, torch.Tensor]:
        """Resize, normalise and patchify a clip: pixel rows (P, C*2*14*14) float32 and grid (1, 3)
        on the device."""
        rows, grid = self.pixel_rows(clip)
        return rows, self._device_grid(grid)

    def _device_grid(self, grid: Tuple[int, int, int]) -> torch.Tensor:
        """(1, 3) long on the device, uploaded without waiting."""
        return torch.tensor([list(grid)], dtype=torch.long).to(self.device, non_blocking=True)

    def pixel_rows(self, clip: VideoClip) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
        """:meth:`pixel_values` with the grid as host values (grid_t, grid_h, grid_w)."""
        frames = torch.from_numpy(np.ascontiguousarray(clip.frames)).to(self.device)
        frames = frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W) in [0, 255]
        (new_h, new_w), (proc_h, proc_w) = self._resize_plan(frames.shape[0], frames.shape[-2], frames.shape[-1])
        frames = resize_frames(frames, new_h, new_w, round_to_uint8=True)
        frames = resize_frames(frames, proc_h, proc_w, round_to_uint8=False)
        return patchify_video(frames, self.image_mean, self.image_std, self.patch_size,
                              self.temporal_patch_size, self.merge_size)

    def prompt_ids(self, question: str, num_video_tokens: int, device: Optional[torch.device] = None) -> torch.Tensor:
        """Chat-template prompt with the video placeholder expanded: (1, S) token ids on ``device``
        (default the model's)."""
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
        return ids.repeat_interleave(counts).unsqueeze(0).to(self.device if device is None else device)

    def _text_inputs(self, question: str, grid_thw: torch.Tensor, device: Optional[torch.device] = None) -> Dict[str, torch.Tensor]:
        """input_ids, attention_mask, mm_token_type_ids, second_per_grid_ts for a video of
        ``grid_thw``, on ``device`` (default the model's)."""
        device = self.device if device is None else torch.device(device)
        input_ids = self.prompt_ids(question, int(grid_thw.prod()) // (self.merge_size ** 2), device)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": (input_ids == self.video_token_id).to(torch.int32) * 2,
            "second_per_grid_ts": torch.ones(1, device=device),
        }

    def prepare_inputs(self, video: VideoSource, question: str, num_frames: Optional[int] = None) -> QwenVideoInputs:
        """Frames, pixel rows and prompt of one call: what the processor would give the unmodified model."""
        clip = self.load_clip(video, num_frames)
        pixels, grid_thw = self.pixel_values(clip)
        return QwenVideoInputs(pixel_values_videos=pixels, video_grid_thw=grid_thw, clip=clip,
                               **self._text_inputs(question, grid_thw))

    # -- vision --------------------------------------------------------------------------------

    @contextmanager
    def _window_attention(self) -> Iterator[None]:
        """The ViT's attention for the duration of one call: every window in one call
        (:mod:`~tango_core.models.vision_attention`) when batching, else transformers' own."""
        config = self.model.model.visual.config
        current = config._attn_implementation
        if self._batches_windows():
            config._attn_implementation = vision_attention.register()
        try:
            yield
        finally:
            config._attn_implementation = current

    def _batches_windows(self) -> bool:
        config = self.model.model.visual.config
        return self.vision_attention == "batched" or (
            self.vision_attention == "auto" and self.device.type == "cuda" and config._attn_implementation in ("sdpa", "eager")
        )

    def vision_tables(self, grid: Tuple[int, int, int]) -> Dict[str, Any]:
        """The ViT's index tables for one video grid (host values), made by transformers' own
        helpers on the host once per grid and kept on the device (rebuilt per call they cost
        milliseconds of Python and host syncs): rotary position ids, window order and the full and
        windowed sequence bounds with their longest lengths, as the keyword arguments that the
        ViT's forward accepts instead."""
        from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index

        visual = self.model.model.visual
        key = tuple(int(v) for v in grid)
        tables = self._vision_table_cache.get(key)
        if tables is None:
            host_grid = torch.tensor([list(key)], dtype=torch.long)
            window_index, cu_window = get_vision_window_index(host_grid, visual.spatial_merge_size, visual.window_size, visual.patch_size)
            cu_seqlens, _ = get_vision_attention_seqlens(host_grid, visual.config)
            cu_window = torch.as_tensor(cu_window, dtype=torch.int32)
            cu_seqlens = torch.as_tensor(cu_seqlens, dtype=torch.int32)

            def up(tensor: torch.Tensor) -> torch.Tensor:
                return tensor.to(self.device, non_blocking=True)

            tables = {
                "position_ids": up(get_vision_position_ids(host_grid, visual.spatial_merge_size)),
                "cu_seqlens": up(cu_seqlens),
                "max_seqlen": int((cu_seqlens[1:] - cu_seqlens[:-1]).max()),
                "window_index": up(window_index),
                "cu_window_seqlens": up(cu_window),
                "max_window_seqlen": int((cu_window[1:] - cu_window[:-1]).max()),
            }
            self._vision_table_cache[key] = tables
            while len(self._vision_table_cache) > GRID_CACHE_SIZE:
                self._vision_table_cache.pop(next(iter(self._vision_table_cache)))
        return tables

    def _vision_features(self, pixels: torch.Tensor, grid_thw: torch.Tensor, tables: Optional[Dict[str, Any]]):
        """transformers' ``get_video_features``, with the fast ViT blocks that ``vision_blocks`` asks
        for and the cached index ``tables`` (None: computed by transformers in the call)."""
        mode = self.vision_blocks
        if mode == "auto":
            mode = "compiled" if self.device.type == "cuda" else "transformers"
        tables = dict(tables or {})  # the ViT pops what it uses
        if mode == "transformers":
            return torch.cat(self.model.model.get_video_features(pixels, grid_thw, **tables).pooler_output, dim=0)
        if self._fast_blocks is None or bool(self._fast_blocks.compiled) != (mode == "compiled"):
            blocks = self.model.model.visual.blocks
            compiled = range(len(blocks) - 1) if mode == "compiled" else ()  # the last one carries the saliency hooks
            self._fast_blocks = FastBlocks(blocks, pad_multiple=64, compiled=compiled)
        return self._fast_blocks.run(self._one_video_features, pixels, grid_thw, **tables)

    def _one_video_features(self, pixels: torch.Tensor, grid_thw: torch.Tensor, **tables: Any) -> torch.Tensor:
        """``get_video_features`` for one video: the ViT and merger, (Nv, D). transformers' own
        splits its output per video by sizes read back from the device, a wait for the whole ViT."""
        visual = self.model.model.visual
        return visual(pixels.type(visual.dtype), grid_thw=grid_thw, **tables).pooler_output

    def encode_video(
        self, pixels: torch.Tensor, grid_thw: torch.Tensor, with_saliency: bool, grid: Optional[Tuple[int, int, int]] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Video embeddings (Nv, D) after the merger in LLM order and, if asked, saliency (grid_t, L).

        ``grid``: ``grid_thw``'s values on the host, when known (else read from it: a wait for the
        device). With batched window attention the ViT's index tables come from :meth:`vision_tables`."""
        core = self.model.model
        if grid is None:
            grid = tuple(int(v) for v in grid_thw.reshape(-1).tolist())
        tables = self.vision_tables(grid) if self._batches_windows() else None
        if not with_saliency:
            with self._window_attention():
                return self._vision_features(pixels, grid_thw, tables), None
        probe = _SaliencyProbe(core.visual, grid, tables["window_index"] if tables else None)
        with probe.attached(), self._window_attention():
            out = self._vision_features(pixels, grid_thw, tables)
        if probe.saliency is None:
            raise RuntimeError("The saliency hooks did not fire; is the ViT's last block bypassed?")
        return out, probe.saliency

    def encode(self, clip: VideoClip, with_saliency: bool, timer: StageTimer) -> VisualTokens:
        """The ViT and its merger (features per temporal patch); saliency from the last ViT block."""
        with timer("preprocess"):
            pixels, grid_thw_host = self.pixel_rows(clip)
            grid_thw = self._device_grid(grid_thw_host)
        with timer("vit"):
            video_embeds, saliency = self.encode_video(pixels, grid_thw, with_saliency, grid=grid_thw_host)
        with timer("project"):
            grid_t, grid_h, grid_w = grid_thw_host
            grid = (grid_h // self.merge_size, grid_w // self.merge_size)
            features = video_embeds.reshape(grid_t, grid[0] * grid[1], -1)
            times = torch.from_numpy(patch_timestamps(np.asarray(clip.timestamps), grid_t)).to(self.device, non_blocking=True)
        return VisualTokens(features, saliency, grid, times)

    # -- prompt with the video -----------------------------------------------------------------

    def video_rope_block(self, grid: Tuple[int, int, int]) -> Tuple[torch.Tensor, int]:
        """M-RoPE ids (3, Nv) of a video's tokens when the video starts at position 0, and the
        position at which the text after it resumes: transformers' ``get_rope_index`` on a
        text-video-text sequence, once per grid (host tensors).

        The ids of a prompt with the video after ``b`` text tokens are these plus ``b``: the
        function is a Python pass over every token (tens of ms on a busy host) and shifts every id
        by the text before the video."""
        cached = self._video_rope_cache.get(grid)
        if cached is None:
            grid_thw = torch.tensor([list(grid)], dtype=torch.long)
            num_video = int(grid_thw.prod()) // (self.merge_size ** 2)
            types = torch.zeros(1, num_video + 2, dtype=torch.int32)
            types[0, 1:-1] = 2
            ids = torch.where(types == 2, self.video_token_id, 0).long()
            positions, _ = self.model.model.get_rope_index(
                ids, mm_token_type_ids=types, video_grid_thw=grid_thw, second_per_grid_ts=torch.ones(1),
                attention_mask=torch.ones_like(ids),
            )
            cached = (positions[:, 0, 1:-1] - 1, int(positions[0, 0, -1]) - 1)
            self._video_rope_cache[grid] = cached
            while len(self._video_rope_cache) > GRID_CACHE_SIZE:
                self._video_rope_cache.pop(next(iter(self._video_rope_cache)))
        return cached

    def prepare_text(self, question: str, clip: VideoClip, visual: VisualTokens) -> "QwenText":
        """The prompt's ids and the full sequence's M-RoPE ids (transformers' ``get_rope_index``,
        through :meth:`video_rope_block`), computed on the host from the video grid while the GPU
        runs the ViT, then uploaded without waiting (integer arithmetic: the same ids as on the device)."""
        num_frames = int(visual.features.shape[0])
        grid = (num_frames, visual.grid[0] * self.merge_size, visual.grid[1] * self.merge_size)
        host = self._text_inputs(question, torch.tensor([grid], dtype=torch.long), device=torch.device("cpu"))
        length = int(host["input_ids"].shape[1])
        video_positions = (host["input_ids"][0] == self.video_token_id).nonzero().squeeze(1)  # one contiguous run
        start, count = int(video_positions[0]), int(video_positions.numel())
        block, resume = self.video_rope_block(grid)
        after = length - start - count
        position_ids = torch.cat([
            torch.arange(start).expand(3, -1), block + start, torch.arange(after).expand(3, -1) + start + resume,
        ], dim=1)[:, None, :]
        rope_deltas = (position_ids.max() + 1 - length).reshape(1, 1)

        def up(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(self.device, non_blocking=True)

        return QwenText(
            input_ids=up(host["input_ids"]), attention_mask=up(host["attention_mask"]), position_ids=up(position_ids),
            rope_deltas=up(rope_deltas), video_positions=up(video_positions), visual_start=start,
            first_new_position=length + int(rope_deltas.reshape(-1)[0]),
        )

    def splice(self, question: str, visual: VisualTokens, kept: KeptTokens, clip: VideoClip, text: Optional["QwenText"] = None) -> QwenPrefill:
        """M-RoPE ids of the full sequence first (``text``, from :meth:`prepare_text`), then the
        pruned video tokens dropped from the embeddings, positions and mask (``rope_deltas`` of the
        full sequence kept). The video's tokens are one run in the prompt, so the embeddings are the
        text's around the (kept) features, and nothing here reads a value back from the device."""
        text = self.prepare_text(question, clip, visual) if text is None else text
        num_frames, per_frame, _ = visual.features.shape
        start, count = text.visual_start, num_frames * per_frame
        if count != text.video_positions.numel():
            raise ValueError(f"The prompt holds {text.video_positions.numel()} video tokens but the ViT gave {count} features; "
                             "prepare_text must be given this call's visual tokens.")
        embed = self.model.model.get_input_embeddings()
        input_ids = text.input_ids
        full_length = int(input_ids.shape[1])
        before, after = embed(input_ids[:, :start]), embed(input_ids[:, start + count:])
        position_ids, rope_deltas, video_positions = text.position_ids, text.rope_deltas, text.video_positions
        attention_mask = text.attention_mask
        if kept.segments is None:  # every video token, in place of its placeholder
            middle = visual.features.reshape(count, -1)
        else:  # pruned: the kept (merged) features at their tokens' places, the rest dropped
            index, order = kept.keep_index.sort()
            middle = kept.features[order]
            device = input_ids.device
            take = torch.cat([torch.arange(start, device=device), index.to(device) + start,
                              torch.arange(start + count, full_length, device=device)])
            position_ids, attention_mask = position_ids.index_select(2, take), attention_mask.index_select(1, take)
        embeds = torch.cat([before, middle.to(before.device, before.dtype)[None], after], dim=1)
        return QwenPrefill(
            inputs_embeds=embeds,
            visual_start=text.visual_start,
            visual_length=int(kept.keep_index.numel()),
            kept=kept,
            clip=clip,
            stats=TangoStats(visual_tokens_after=int(kept.keep_index.numel())),
            position_ids=position_ids,
            attention_mask=attention_mask,
            full_length=full_length,
            rope_deltas=rope_deltas,
            video_positions=video_positions,
            visual=visual,
            first_new_position=text.first_new_position,
        )

    # -- language model ------------------------------------------------------------------------

    def decode_positions(self, prefill: QwenPrefill, step: int, count: int = 1) -> torch.Tensor:
        """M-RoPE ids (3, 1, count) of generated tokens ``step .. step+count-1`` (0: the first one)."""
        base = prefill.first_new_position + step
        pos = torch.arange(base, base + count, device=self.device)
        return pos.view(1, 1, -1).expand(3, 1, -1)

    def start(self, prefill: QwenPrefill) -> Tuple[torch.Tensor, Any]:
        """Run the (pruned) prompt with its original M-RoPE positions."""
        static = self._static_decoding(position_shape=(3, 1, 1))
        if static is not None:  # one prompt, no padding in it: the causal mask is all it needs
            length = prefill.inputs_embeds.shape[1]
            cache = static.cache(length + prefill.max_new_tokens)
            logits = static.prefill(_static_prefill, cache, prefill.inputs_embeds, prefill.position_ids)
            return logits, ("static", prefill, cache, length)
        out = self.model(
            inputs_embeds=prefill.inputs_embeds,
            position_ids=prefill.position_ids,
            attention_mask=prefill.attention_mask,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1], (prefill, out.past_key_values, prefill.attention_mask)

    def step(self, token: torch.Tensor, state: Any, n: int) -> Tuple[torch.Tensor, Any]:
        """Feed generated token ``n`` at position S + n + rope_deltas (the unpruned sequence's)."""
        if state[0] == "static":
            _, prefill, cache, length = state
            position = self.decode_positions(prefill, n)
            logits = self._static_decoding((3, 1, 1)).step(_static_step, cache, token, length + n, position)
            return logits, state
        prefill, cache, mask = state
        mask = torch.cat([mask, mask.new_ones((1, 1))], dim=1)
        out = self.model(
            input_ids=token.view(1, 1),
            position_ids=self.decode_positions(prefill, n),
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1], (prefill, out.past_key_values, mask)


def _static_prefill(model, embeds: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, last: torch.Tensor, cache) -> torch.Tensor:
    """The prompt (1, S, D) at M-RoPE ids (3, 1, S) into a static cache at ``slots`` (S,): logits
    (1, V) of the token at ``last`` (1,)."""
    core = model.model
    out = core.language_model(inputs_embeds=embeds, position_ids=positions, past_key_values=cache, cache_position=slots, use_cache=True)
    return model.lm_head(out.last_hidden_state.index_select(1, last)[:, 0])


def _static_step(model, token: torch.Tensor, slot: torch.Tensor, position: torch.Tensor, cache) -> torch.Tensor:
    """One decoding step on a static cache (captured as a CUDA graph on CUDA); no attention mask
    needed: the prompt has no padding, and the cache slot bounds what is attended to."""
    core = model.model
    out = core.language_model(
        inputs_embeds=core.get_input_embeddings()(token), position_ids=position, past_key_values=cache,
        cache_position=slot, use_cache=True,
    )
    return model.lm_head(out.last_hidden_state[:, -1])

"""The Tango pre-LLM pipeline (spec section 4): ``tango_prune``.

The stages (:mod:`tango_core.stages`) run on the device with one device-to-host transfer after
the first (similarities, value checks); the host then segments and plans, and every later size is
fixed by the plan (:mod:`tango_core.layout`). On CUDA the device stages are replayed as CUDA
graphs by default (:mod:`tango_core.graphs`); elsewhere, or with ``cuda_graphs=False``, they run
eagerly.
"""

from __future__ import annotations

from contextlib import nullcontext

from dataclasses import dataclass
from typing import ContextManager, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .config import TangoConfig, resolve_rope_sections
from .layout import DeviceLayout, SizeFn, build_layout, exact_size, unpack
from .stages import (
    extended_table,
    layout_stage,
    plan_from_statistics,
    rope_stage,
    statistics_stage,
)


@dataclass
class TangoResult:
    """keep_index: (K,) int64 sorted flat indices into the N*L tokens.
    kept_features: (K, D) features the LLM receives, in the input dtype.
    segments: frame count of each temporal segment, in order.
    """

    keep_index: torch.Tensor
    kept_features: torch.Tensor
    segments: List[int]


def _validate(
    features: torch.Tensor,
    saliency: torch.Tensor,
    grid: Sequence[int],
    timestamps: Optional[torch.Tensor],
    global_features: Optional[torch.Tensor],
    config: TangoConfig,
) -> Tuple[int, int]:
    """Check every input; returns the grid as (H, W) ints."""
    if not isinstance(features, torch.Tensor) or features.dim() != 3:
        raise ValueError(
            f"features must be a tensor of shape (N, L, D) (frames, tokens per frame, channels), got "
            f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}."
        )
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point (fp32, fp16 or bf16), got {features.dtype}.")
    num_frames, num_tokens, _ = features.shape
    if num_frames == 0 or num_tokens == 0:
        raise ValueError(
            f"empty video: features have shape {tuple(features.shape)}; Tango needs at least one frame "
            "with at least one token. Check that the video decoded to frames."
        )
    if len(grid) != 2 or int(grid[0]) < 1 or int(grid[1]) < 1:
        raise ValueError(f"grid must be (H, W) with positive sizes, got {tuple(grid)!r}.")
    height, width = int(grid[0]), int(grid[1])
    if height * width != num_tokens:
        raise ValueError(
            f"grid {height}x{width} = {height * width} tokens does not match features' L = {num_tokens} "
            "tokens per frame; pass grid=(H, W) with H * W == L."
        )
    if not isinstance(saliency, torch.Tensor) or tuple(saliency.shape) != (num_frames, num_tokens):
        raise ValueError(
            f"saliency must have shape (N, L) = {(num_frames, num_tokens)} to match features, got "
            f"{tuple(saliency.shape) if isinstance(saliency, torch.Tensor) else type(saliency).__name__}."
        )
    if timestamps is not None and tuple(timestamps.shape) != (num_frames,):
        raise ValueError(
            f"timestamps must have shape (N,) = ({num_frames},), one time in seconds per frame, got "
            f"{tuple(timestamps.shape)}."
        )
    if global_features is not None and (global_features.dim() != 2 or global_features.shape[0] != num_frames):
        raise ValueError(
            f"global_features must have shape (N, D') with N = {num_frames}, got {tuple(global_features.shape)}."
        )
    for name, tensor in (("saliency", saliency), ("timestamps", timestamps), ("global_features", global_features)):
        if tensor is not None and tensor.device != features.device:
            raise ValueError(f"{name} is on {tensor.device} but features are on {features.device}; move them together.")
    bad_sinks = [p for p in config.sink_positions if not 0 <= p < num_tokens]
    if bad_sinks:
        raise ValueError(
            f"sink_positions {bad_sinks} are outside the {height}x{width} grid (valid: 0 .. {num_tokens - 1}); "
            "use the preset of the model whose grid this is, or none."
        )
    resolve_rope_sections(features.shape[-1], config.rope_sections)
    return height, width


def tango_prune(
    features: torch.Tensor,
    saliency: torch.Tensor,
    grid: Tuple[int, int],
    timestamps: Optional[torch.Tensor] = None,
    config: Optional[TangoConfig] = None,
    global_features: Optional[torch.Tensor] = None,
) -> TangoResult:
    """Prune the visual tokens of one video with Tango.

    features: (N, L, D) projected visual tokens, L = H * W, any float dtype.
    saliency: (N, L) non-negative attention weights. grid: (H, W) row-major token grid.
    timestamps: (N,) frame times in seconds (None: 0, 1, 2, ...).
    global_features: (N, D') per-frame summaries for the ``fastvid`` segmenter (None: token mean).
    Returns the kept flat indices (sorted), their features and the segment lengths.
    Inputs are not modified. ``retention_ratio == 1.0`` returns every token unchanged.
    """
    config = config if config is not None else TangoConfig()
    grid = _validate(features, saliency, grid, timestamps, global_features, config)
    if features.is_cuda and config.cuda_graphs:
        from .graphs import default_graphs

        return default_graphs().prune(features, saliency, grid, timestamps, config, global_features)
    # Inference mode skips autograd's per-operation bookkeeping: the pipeline is launch-bound, so
    # this is a large share of its host time. Outputs are cloned out of it as ordinary tensors.
    with torch.inference_mode(), on_device_of(features):
        result = _prune_eager(features, saliency, grid, timestamps, config, global_features)
    if torch.is_inference_mode_enabled():
        return result
    return TangoResult(result.keep_index.clone(), result.kept_features.clone(), result.segments)


def on_device_of(tensor: torch.Tensor) -> ContextManager:
    """Make ``tensor``'s CUDA device the current one (Triton kernels and CUDA graphs run on the
    current device); nothing to do for CPU tensors or when it already is."""
    if tensor.is_cuda and tensor.device.index != torch.cuda.current_device():
        return torch.cuda.device(tensor.device)
    return nullcontext()


def frame_times(timestamps: Optional[torch.Tensor], num_frames: int, device: torch.device) -> torch.Tensor:
    """(N,) float32 frame times: ``timestamps``, or the frame index."""
    if timestamps is None:
        return torch.arange(num_frames, device=device, dtype=torch.float32)
    return timestamps.to(dtype=torch.float32)


def sink_tensor(config: TangoConfig, device: torch.device) -> Optional[torch.Tensor]:
    """The sink positions as a device tensor, or None."""
    if not config.sink_positions:
        return None
    return torch.tensor(config.sink_positions, dtype=torch.int64).to(device)


class HostCopy:
    """A device tensor's copy on the host, started without waiting for queued work."""

    def __init__(
        self, tensor: torch.Tensor, pinned: Optional[torch.Tensor] = None, event: Optional["torch.cuda.Event"] = None
    ) -> None:
        """pinned / event: a reusable pinned host buffer of ``tensor``'s shape and CUDA event."""
        self._event = None
        if not tensor.is_cuda:
            self._host = tensor
            return
        self._host = pinned if pinned is not None else torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        self._host.copy_(tensor, non_blocking=True)
        self._event = event if event is not None else torch.cuda.Event()
        self._event.record()

    def wait(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
        return self._host.numpy()


def upload_layout(layout: DeviceLayout, device: torch.device) -> torch.Tensor:
    """The layout's packed tables as one uint8 tensor on ``device``, copied without waiting for queued work."""
    if device.type != "cuda":
        return torch.from_numpy(layout.packed).to(device)
    staging = torch.empty(layout.packed.shape, dtype=torch.uint8, pin_memory=True)
    staging.numpy()[:] = layout.packed
    return staging.to(device, non_blocking=True)


def identity_result(features: torch.Tensor, segments: List[int]) -> TangoResult:
    """Every token, unchanged (``retention_ratio == 1.0``)."""
    num_frames, num_tokens, dim = features.shape
    keep = torch.arange(num_frames * num_tokens, device=features.device)
    return TangoResult(keep_index=keep, kept_features=features.reshape(-1, dim), segments=segments)


def _prune_eager(
    features: torch.Tensor,
    saliency: torch.Tensor,
    grid: Tuple[int, int],
    timestamps: Optional[torch.Tensor],
    config: TangoConfig,
    global_features: Optional[torch.Tensor],
    size_fn: SizeFn = exact_size,
    layout_options: tuple = (),
) -> TangoResult:
    """:func:`tango_prune` after validation, running every stage eagerly.

    ``size_fn`` pads the layout (default: no padding; the graph path pads with ``bucket_size``);
    ``layout_options``: further arguments of :func:`~tango_core.layout.build_layout`
    (merge_slack, merge_small, coarse_fn; default: its defaults).
    """
    num_frames, num_tokens, dim = features.shape
    device = features.device
    times = frame_times(timestamps, num_frames, device)
    extended = extended_table(num_frames, num_tokens, dim, device)
    statistics, norms, saliency32, times32 = statistics_stage(
        features, extended, saliency, times, global_features, sink_tensor(config, device), config
    )
    copy = HostCopy(statistics)
    pruning = config.retention_ratio < 1.0
    if pruning:  # queued while the statistics travel and the host plans
        rope = rope_stage(extended, norms, times32, grid, resolve_rope_sections(dim, config.rope_sections), config)
    segments, plan = plan_from_statistics(copy.wait(), num_frames, num_tokens, config)
    if plan is None:
        return identity_result(features, segments)
    layout = build_layout(plan, num_frames, num_tokens, config.num_neighbors, size_fn, *layout_options)
    tables = unpack(upload_layout(layout, device), layout.spec)
    keep, kept = layout_stage(tables, dict(layout.dims), extended, saliency32, rope, config)
    count = layout.num_kept
    return TangoResult(keep_index=keep[:count], kept_features=kept[:count].to(features.dtype), segments=segments)

"""``tango_prune``: the one public entry of Tango's pre-LLM pruning (spec section 4).

It validates its inputs, then dispatches: ``backend="reference"`` to the readable oracle
(:func:`tango_core.reference.reference_prune`); the fast pipeline
(:func:`tango_core.pipeline.run_pipeline`) to CUDA graphs (:mod:`tango_core.graphs`) for CUDA
inputs with ``cuda_graphs``, else to the eager executor (:func:`tango_core.pipeline.prune_eagerly`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .config import TangoConfig, resolve_rope_sections
from .graphs import graph_cache
from .pipeline import frame_times, prune_eagerly, sink_tensor
from .stages import check_values
from .types import TangoResult, VideoInputs


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
    inputs = VideoInputs(features, saliency, grid, timestamps, global_features)
    execution = config.execution
    if execution.backend == "reference":
        return _prune_with_reference(inputs, config)
    if features.is_cuda and execution.cuda_graphs:
        return graph_cache().prune(inputs, config)
    return prune_eagerly(inputs, config)


def _prune_with_reference(inputs: VideoInputs, config: TangoConfig) -> TangoResult:
    """:func:`tango_core.reference.reference_prune`, after the value checks the fast pipeline makes."""
    from .reference import reference_prune

    device = inputs.features.device
    times = frame_times(inputs.timestamps, inputs.features.shape[0], device)
    check_values(inputs.features, inputs.saliency, times, sink_tensor(config, device))
    result = reference_prune(inputs.features, inputs.saliency, inputs.grid, inputs.timestamps, config, inputs.global_features)
    return TangoResult(result.keep_index, result.kept_features, list(result.segments))


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

"""The one sequence of the fast Tango pipeline (spec section 4), and its eager executor.

:func:`run_pipeline` runs statistics (device) -> their copy to the host -> ST-RoPE (device, queued
while the copy travels) -> plan (host: value checks, segments, budgets, padded layout) ->
selection and merging (device) -> outputs. A *stage runner* says how the device stages run:
:class:`EagerRunner` launches them as they come (any device); :mod:`tango_core.graphs` replays
them as CUDA graphs. :func:`prune_eagerly` is ``tango_prune`` on the eager runner.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager, List, Optional, Protocol, Tuple

import numpy as np
import torch
from torch.profiler import record_function

from .config import TangoConfig, resolve_rope_sections
from .layout import EXACT_LAYOUT, DeviceLayout, LayoutPolicy, build_layout, unpack
from .ops import Ops, select_ops
from .stages import Statistics, extended_table, layout_stage, plan_from_statistics, rope_stage, statistics_stage
from .types import Points, TangoResult, VideoInputs


class StageRunner(Protocol):
    """How the device stages of one call run (see :func:`run_pipeline`)."""

    layout_policy: LayoutPolicy

    def statistics(self) -> Statistics:
        """The statistics stage of the call's inputs."""

    def copy_to_host(self, values: torch.Tensor) -> "HostCopy":
        """Start copying the statistics vector to the host."""

    def rope(self, statistics: Statistics) -> Points:
        """The (N * L, D) ST-RoPE point table."""

    def select_and_merge(self, layout: DeviceLayout, statistics: Statistics, rope: Points) -> Tuple[torch.Tensor, torch.Tensor]:
        """:func:`~tango_core.stages.layout_stage` of ``layout``: (T,) ids and (T, D) float32 features."""


def run_pipeline(runner: StageRunner, inputs: VideoInputs, config: TangoConfig) -> TangoResult:
    """The fast pipeline on ``runner``. Returns the first K ids and their float32 features (views
    of the runner's outputs), or every token unchanged when ``retention_ratio == 1.0``."""
    num_frames, num_tokens, _ = inputs.features.shape
    statistics = runner.statistics()
    copy = runner.copy_to_host(statistics.values)
    rope = runner.rope(statistics) if config.retention_ratio < 1.0 else None
    with _profiled("tango.wait"):
        host = copy.wait()
    with _profiled("tango.plan"):
        segments, plan = plan_from_statistics(host, num_frames, num_tokens, config)
        if plan is None:
            return identity_result(inputs.features, segments)
        layout = build_layout(plan, num_frames, num_tokens, runner.layout_policy)
    with _profiled("tango.layout_stage"):
        keep, kept = runner.select_and_merge(layout, statistics, rope)
    return TangoResult(keep_index=keep[: layout.num_kept], kept_features=kept[: layout.num_kept], segments=segments)


def _profiled(name: str) -> ContextManager:
    """A profiler range around host steps, only while a profiler records (ranges cost host time)."""
    return record_function(name) if torch.autograd._profiler_enabled() else nullcontext()


class EagerRunner:
    """Launches each device stage of one call as it comes (CPU, or CUDA without graphs)."""

    def __init__(self, inputs: VideoInputs, config: TangoConfig, ops: Ops, layout_policy: LayoutPolicy = EXACT_LAYOUT) -> None:
        self.inputs, self.config, self.ops, self.layout_policy = inputs, config, ops, layout_policy
        self.extended = extended_table(*inputs.features.shape, inputs.features.device)

    def statistics(self) -> Statistics:
        inputs, device = self.inputs, self.inputs.features.device
        times = frame_times(inputs.timestamps, inputs.features.shape[0], device)
        sinks = sink_tensor(self.config, device)
        return statistics_stage(
            inputs.features, self.extended, inputs.saliency, times, inputs.global_features, sinks, self.config, self.ops
        )

    def copy_to_host(self, values: torch.Tensor) -> "HostCopy":
        return HostCopy(values)

    def rope(self, statistics: Statistics) -> Points:
        sections = resolve_rope_sections(self.inputs.features.shape[-1], self.config.rope_sections)
        return rope_stage(self.extended, statistics, self.inputs.grid, sections, self.config, self.ops)

    def select_and_merge(self, layout: DeviceLayout, statistics: Statistics, rope: Points) -> Tuple[torch.Tensor, torch.Tensor]:
        return run_layout_stage(layout, self.extended, statistics.saliency, rope, self.config, self.ops)


def run_layout_stage(
    layout: DeviceLayout, extended: torch.Tensor, saliency: torch.Tensor, rope: Points, config: TangoConfig, ops: Ops
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Upload ``layout``'s tables, then launch :func:`~tango_core.stages.layout_stage` on them."""
    tables = unpack(upload_layout(layout, extended.device), layout.spec)
    return layout_stage(tables, dict(layout.dims), extended, saliency, rope, config, ops)


def prune_eagerly(inputs: VideoInputs, config: TangoConfig, layout_policy: LayoutPolicy = EXACT_LAYOUT) -> TangoResult:
    """``tango_prune`` of validated inputs with every stage launched eagerly.

    ``layout_policy``: how the plan's tables are padded (default: not at all; the graph path
    pads with :data:`tango_core.graphs.GRAPH_LAYOUT`, and so gives the same results).
    """
    features = inputs.features
    ops = select_ops(config.execution, features.device)
    # Inference mode skips autograd's per-operation bookkeeping: the pipeline is launch-bound, so
    # this is a large share of its host time. Outputs are cloned out of it as ordinary tensors.
    with torch.inference_mode(), on_device_of(features):
        result = run_pipeline(EagerRunner(inputs, config, ops, layout_policy), inputs, config)
        kept = result.kept_features.to(features.dtype)
    if torch.is_inference_mode_enabled():
        return TangoResult(result.keep_index, kept, result.segments)
    return TangoResult(result.keep_index.clone(), kept.clone(), result.segments)


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
    """The sink positions as a (S,) int64 device tensor, or None."""
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

"""CUDA-graph execution of the Tango pipeline.

One ``tango_prune`` call issues about 150 small kernels; launched one by one from Python they
cost several milliseconds of host time, far more than the GPU work. Here each device stage of
:mod:`tango_core.stages` is captured once as a CUDA graph and then replayed, one launch each:

* per video shape (N, L, D, dtypes, grid and the stage settings): the statistics stage and the
  ST-RoPE stage, reading static input buffers that each call fills with one copy per input;
* per plan *layout*: the selection and merging stage. Layouts are padded to bucketed sizes
  (:func:`tango_core.layout.bucket_size`) so that different videos share graphs. A layout is
  captured the second time it is seen; the first time it runs eagerly on the same padded tables,
  so results do not depend on whether a graph ran.

All graphs of one video shape share a memory pool. Replays happen one at a time (a lock), on the
caller's current stream, and each call copies its outputs out before returning, which is what
makes sharing the pool safe. :func:`clear_cuda_graphs` frees everything.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from contextlib import nullcontext
from typing import Callable, Dict, Optional, Tuple

import torch
from torch.profiler import record_function

from .config import TangoConfig, resolve_rope_sections
from .layout import DeviceLayout, bucket_size, build_layout, packed_size, power_of_two_size, unpack
from .prune import HostCopy, TangoResult, frame_times, identity_result, on_device_of, sink_tensor, upload_layout
from .stages import (
    extended_table,
    layout_stage,
    plan_from_statistics,
    rope_stage,
    statistics_stage,
)


# Replayed graphs leave the GPU work as the cost: group context pools with little padding.
GRAPH_MERGE_SLACK = 1.5
GRAPH_MERGE_SMALL = 1 << 20
# (merge_slack, merge_small, coarse_fn) of the layouts the graph path runs.
GRAPH_LAYOUT = (GRAPH_MERGE_SLACK, GRAPH_MERGE_SMALL, power_of_two_size)


def _profiled(name: str):
    """A profiler range around host steps, only while a profiler records (ranges cost host time)."""
    return record_function(name) if torch.autograd._profiler_enabled() else nullcontext()


def graph_layout(plan, num_frames: int, num_tokens: int, config: TangoConfig) -> DeviceLayout:
    """The padded layout the graph path runs for ``plan``."""
    return build_layout(plan, num_frames, num_tokens, config.num_neighbors, bucket_size, *GRAPH_LAYOUT)


class CapturedCall:
    """``function()`` (reading tensors it closes over) captured as a CUDA graph.

    Unless ``warm_up=False`` (the same work already ran eagerly), it runs once eagerly on a side
    stream first: lazy library initialisation and cached constant tables must not happen during
    capture. :meth:`replay` relaunches it and returns the same output tensors, refilled.
    """

    def __init__(self, function: Callable[[], tuple], pool: tuple, warm_up: bool = True) -> None:
        # The graph reads tensors at fixed addresses: whatever the function closes over must live
        # as long as the graph does.
        self.function = function
        if warm_up:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                function()
            torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.outputs = function()

    def replay(self) -> tuple:
        self.graph.replay()
        return self.outputs


class _LayoutGraph:
    """The selection and merging stage of one layout shape, with its input buffers."""

    def __init__(
        self, layout: DeviceLayout, inputs: Callable[[], tuple], config: TangoConfig, pool: tuple, warm_up: bool
    ) -> None:
        size = packed_size(layout.spec)
        device = inputs()[0].device
        self.staging = torch.zeros(size, dtype=torch.uint8, pin_memory=device.type == "cuda")
        self.buffer = torch.zeros(size, dtype=torch.uint8, device=device)
        self.uploaded = torch.cuda.Event()
        self.uploaded.record()
        self.upload(layout)
        tables, dims = unpack(self.buffer, layout.spec), dict(layout.dims)
        self.call = CapturedCall(lambda: layout_stage(tables, dims, *inputs(), config), pool, warm_up)

    def upload(self, layout: DeviceLayout) -> None:
        """Copy a layout of this shape into the graph's input buffer (before a replay)."""
        self.uploaded.synchronize()  # the previous copy out of the staging buffer has finished
        self.staging.numpy()[:] = layout.packed
        self.buffer.copy_(self.staging, non_blocking=True)
        self.uploaded.record()


class _VideoGraphs:
    """Graphs and static buffers of one video shape."""

    def __init__(
        self,
        features: torch.Tensor,
        saliency: torch.Tensor,
        timestamps: Optional[torch.Tensor],
        global_features: Optional[torch.Tensor],
        grid: Tuple[int, int],
        config: TangoConfig,
    ) -> None:
        device = features.device
        self.grid = grid
        self.pool = torch.cuda.graph_pool_handle()
        self.extended = extended_table(*features.shape, device)
        self.features = torch.empty_like(features, memory_format=torch.contiguous_format)
        self.saliency = torch.zeros_like(saliency, memory_format=torch.contiguous_format)
        self.times = frame_times(timestamps, features.shape[0], device).clone()
        self.global_features = None if global_features is None else torch.zeros_like(global_features)
        sinks = sink_tensor(config, device)
        self.fill(features, saliency, timestamps, global_features)
        self.statistics = CapturedCall(
            lambda: statistics_stage(
                self.features, self.extended, self.saliency, self.times, self.global_features, sinks, config
            ),
            self.pool,
        )
        self.host_statistics = torch.empty(
            self.statistics.outputs[0].shape, dtype=torch.float32, pin_memory=device.type == "cuda"
        )
        self.statistics_copied = torch.cuda.Event() if device.type == "cuda" else None
        self.rope: Optional[CapturedCall] = None
        self.sections = resolve_rope_sections(features.shape[-1], config.rope_sections)
        self.layouts: "OrderedDict[tuple, _LayoutGraph]" = OrderedDict()
        self.seen: Dict[tuple, int] = {}

    def fill(self, features, saliency, timestamps, global_features) -> None:
        """Copy a call's inputs into the static buffers."""
        self.features.copy_(features)
        self.saliency.copy_(saliency)
        if timestamps is not None:
            self.times.copy_(timestamps)
        if global_features is not None:
            self.global_features.copy_(global_features)

    def rope_call(self, config: TangoConfig) -> CapturedCall:
        if self.rope is None:
            _, norms, _, times32 = self.statistics.outputs
            self.rope = CapturedCall(
                lambda: (rope_stage(self.extended, norms, times32, self.grid, self.sections, config),), self.pool
            )
        return self.rope


def _video_key(features, saliency, timestamps, global_features, grid, config: TangoConfig) -> tuple:
    """What fixes the statistics and ST-RoPE stages: shapes, dtypes, and their settings."""
    return (
        features.device,
        tuple(features.shape),
        features.dtype,
        saliency.dtype,
        None if timestamps is None else timestamps.dtype,
        None if global_features is None else (tuple(global_features.shape), global_features.dtype),
        tuple(grid),
        config.segmenter,
        config.resolved_similarity_threshold(),
        config.static_threshold,
        config.sink_positions,
        config.rope_sections,
        config.base_time,
        config.base_space,
        config.fused_kernels,
    )


class TangoGraphs:
    """A bounded cache of captured graphs, and ``tango_prune`` on top of it.

    max_videos: video shapes kept (least recently used dropped first); max_layouts: layout
    graphs kept per video shape; capture_after: how many times a layout must be seen before it is
    captured (earlier calls run the same padded stage eagerly).
    """

    def __init__(self, max_videos: int = 4, max_layouts: int = 64, capture_after: int = 2) -> None:
        self.max_videos = max_videos
        self.max_layouts = max_layouts
        self.capture_after = capture_after
        self._videos: "OrderedDict[tuple, _VideoGraphs]" = OrderedDict()
        self._lock = threading.Lock()
        self.replays = 0
        self.captures = 0
        self.eager_runs = 0

    def clear(self) -> None:
        with self._lock:
            self._videos.clear()
        gc.collect()  # graphs and the closures they keep alive form reference cycles

    def _video(self, features, saliency, grid, timestamps, config, global_features) -> _VideoGraphs:
        """The graphs of this call's video shape, their static inputs filled with the call's."""
        key = _video_key(features, saliency, timestamps, global_features, grid, config)
        video = self._videos.pop(key, None)
        if video is None:  # its constructor fills the inputs before capturing
            video = _VideoGraphs(features, saliency, timestamps, global_features, grid, config)
            while len(self._videos) >= self.max_videos:
                self._videos.popitem(last=False)
        else:
            video.fill(features, saliency, timestamps, global_features)
        self._videos[key] = video
        return video

    def prune(
        self,
        features: torch.Tensor,
        saliency: torch.Tensor,
        grid: Tuple[int, int],
        timestamps: Optional[torch.Tensor],
        config: TangoConfig,
        global_features: Optional[torch.Tensor],
    ) -> TangoResult:
        """:func:`tango_core.tango_prune` of validated CUDA inputs, through graphs.

        The work runs in inference mode; the outputs are copied after it (graph outputs are
        overwritten by the next replay), so outside inference mode they are ordinary tensors.
        """
        with self._lock, on_device_of(features):
            with torch.inference_mode():
                result = self._prune(features, saliency, grid, timestamps, config, global_features)
            kept = result.kept_features.to(features.dtype, copy=True)
            return TangoResult(keep_index=result.keep_index.clone(), kept_features=kept, segments=result.segments)

    def _prune(self, features, saliency, grid, timestamps, config, global_features) -> TangoResult:
        """:meth:`prune` before the copies: its outputs are views of graph buffers."""
        video = self._video(features, saliency, grid, timestamps, config, global_features)
        statistics, _, saliency32, _ = video.statistics.replay()
        copy = HostCopy(statistics, video.host_statistics, video.statistics_copied)
        pruning = config.retention_ratio < 1.0
        if pruning:
            (rope,) = video.rope_call(config).replay()
        with _profiled("tango.wait"):
            host = copy.wait()
        with _profiled("tango.plan"):
            num_frames, num_tokens, _ = features.shape
            segments, plan = plan_from_statistics(host, num_frames, num_tokens, config)
            if plan is None:
                return identity_result(features, segments)
            layout = graph_layout(plan, num_frames, num_tokens, config)
        with _profiled("tango.layout_stage"):
            keep, kept = self._run_layout(video, layout, (video.extended, saliency32, rope), config)
        return TangoResult(keep_index=keep[: layout.num_kept], kept_features=kept[: layout.num_kept], segments=segments)

    def _run_layout(self, video: _VideoGraphs, layout: DeviceLayout, inputs: tuple, config: TangoConfig):
        key = (layout.key, config.num_neighbors, config.beta, config.own_anchor_merge, config.fused_kernels)
        graph = video.layouts.pop(key, None)
        if graph is None:
            seen = video.seen.get(key, 0) + 1
            if len(video.seen) > 64 * self.max_layouts:
                video.seen.clear()
            video.seen[key] = seen
            if seen < self.capture_after:
                self.eager_runs += 1
                tables = unpack(upload_layout(layout, inputs[0].device), layout.spec)
                return layout_stage(tables, dict(layout.dims), *inputs, config)
            # A layout that already ran eagerly has nothing left to initialise: no warm-up run.
            graph = _LayoutGraph(layout, lambda: inputs, config, video.pool, warm_up=self.capture_after < 2)
            self.captures += 1
            while len(video.layouts) >= self.max_layouts:
                video.layouts.popitem(last=False)
        else:
            graph.upload(layout)
        video.layouts[key] = graph
        self.replays += 1
        return graph.call.replay()


_DEFAULT: Optional[TangoGraphs] = None
_DEFAULT_LOCK = threading.Lock()


def default_graphs() -> TangoGraphs:
    """The process-wide graph cache that :func:`tango_core.tango_prune` uses."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = TangoGraphs()
        return _DEFAULT


def clear_cuda_graphs() -> None:
    """Drop every captured graph and its memory (e.g. before loading another model)."""
    if _DEFAULT is not None:
        _DEFAULT.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

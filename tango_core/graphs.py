"""CUDA-graph execution of the fast pipeline, and its bounded cache.

One ``tango_prune`` call issues about 150 small kernels; launched one by one from Python they
cost several milliseconds of host time, far more than the GPU work. Here the device stages of
:func:`tango_core.pipeline.run_pipeline` are captured once as CUDA graphs and then replayed, one
launch each:

* per video shape (N, L, D, dtypes, grid and the stage settings): the statistics stage and the
  ST-RoPE stage, reading static input buffers that each call fills with one copy per input;
* per plan *layout*: the selection and merging stage. Layouts are padded to bucketed sizes
  (:data:`GRAPH_LAYOUT`) so that different videos share graphs. A layout is captured once it has
  been seen ``graph_capture_after`` times; before that it runs eagerly on the same padded tables,
  so results do not depend on whether a graph ran.

All graphs of one video shape share a memory pool. Replays happen one at a time (a lock), on the
caller's current stream, and each call copies its outputs out before returning, which is what
makes sharing the pool safe. The cache of ``tango_prune`` is :func:`graph_cache`; its bounds are
execution options (:class:`~tango_core.config.ExecutionOptions`); :func:`clear_cuda_graphs`
frees everything.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from typing import Callable, Dict, Optional, Tuple

import torch

from .config import TangoConfig, resolve_rope_sections
from .layout import DeviceLayout, LayoutPolicy, bucket_size, packed_size, power_of_two_size, unpack
from .ops import Ops, select_ops
from .pipeline import HostCopy, frame_times, on_device_of, run_layout_stage, run_pipeline, sink_tensor
from .rope_tables import CAPTURE_LOCK, clear_rope_tables, rope_angle_tables
from .stages import Statistics, extended_table, layout_stage, rope_stage, statistics_stage
from .types import SPLIT_SCALE, Points, TangoResult, VideoInputs

GRAPH_LAYOUT = LayoutPolicy(size_fn=bucket_size, merge_slack=1.5, merge_small=1 << 20, coarse_fn=power_of_two_size)
"""Replayed graphs leave the GPU work as the cost: bucketed sizes, context pools grouped with
little padding."""


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
        self, layout: DeviceLayout, inputs: Callable[[], tuple], config: TangoConfig, ops: Ops, pool: tuple, warm_up: bool
    ) -> None:
        size = packed_size(layout.spec)
        device = inputs()[0].device
        self.staging = torch.zeros(size, dtype=torch.uint8, pin_memory=device.type == "cuda")
        self.buffer = torch.zeros(size, dtype=torch.uint8, device=device)
        self.uploaded = torch.cuda.Event()
        self.uploaded.record()
        self.upload(layout)
        tables, dims = unpack(self.buffer, layout.spec), dict(layout.dims)
        self.call = CapturedCall(lambda: layout_stage(tables, dims, *inputs(), config, ops), pool, warm_up)

    def upload(self, layout: DeviceLayout) -> None:
        """Copy a layout of this shape into the graph's input buffer (before a replay)."""
        self.uploaded.synchronize()  # the previous copy out of the staging buffer has finished
        self.staging.numpy()[:] = layout.packed
        self.buffer.copy_(self.staging, non_blocking=True)
        self.uploaded.record()


class _VideoGraphs:
    """Graphs and static buffers of one video shape."""

    def __init__(self, inputs: VideoInputs, config: TangoConfig, ops: Ops) -> None:
        features, saliency = inputs.features, inputs.saliency
        device = features.device
        self.grid = inputs.grid
        self.pool = torch.cuda.graph_pool_handle()
        self.extended = extended_table(*features.shape, device)
        self.features = torch.empty_like(features, memory_format=torch.contiguous_format)
        self.saliency = torch.zeros_like(saliency, memory_format=torch.contiguous_format)
        self.times = frame_times(inputs.timestamps, features.shape[0], device).clone()
        self.global_features = None if inputs.global_features is None else torch.zeros_like(inputs.global_features)
        sinks = sink_tensor(config, device)
        self.fill(inputs)
        self.statistics = CapturedCall(
            lambda: statistics_stage(
                self.features, self.extended, self.saliency, self.times, self.global_features, sinks, config, ops
            ),
            self.pool,
        )
        self.host_statistics = torch.empty(
            self.statistics.outputs.values.shape, dtype=torch.float32, pin_memory=device.type == "cuda"
        )
        self.statistics_copied = torch.cuda.Event() if device.type == "cuda" else None
        self.rope: Optional[CapturedCall] = None
        self.rope_tables: tuple = ()
        self.sections = resolve_rope_sections(features.shape[-1], config.rope_sections)
        self.layouts: "OrderedDict[tuple, _LayoutGraph]" = OrderedDict()
        self.seen: Dict[tuple, int] = {}

    def fill(self, inputs: VideoInputs) -> None:
        """Copy a call's inputs into the static buffers."""
        self.features.copy_(inputs.features)
        self.saliency.copy_(inputs.saliency)
        if inputs.timestamps is not None:
            self.times.copy_(inputs.timestamps)
        if inputs.global_features is not None:
            self.global_features.copy_(inputs.global_features)

    def rope_call(self, config: TangoConfig, ops: Ops) -> CapturedCall:
        """The ST-RoPE graph, captured on first use."""
        if self.rope is None:
            statistics = self.statistics.outputs
            with CAPTURE_LOCK:  # the graph reads the cached angle tables in place: hold them
                self.rope_tables = rope_angle_tables(
                    tuple(self.grid), self.sections, config.base_time, config.base_space, SPLIT_SCALE, self.extended.device
                )
                self.rope = CapturedCall(
                    lambda: (rope_stage(self.extended, statistics, self.grid, self.sections, config, ops),), self.pool
                )
        return self.rope


def _video_key(inputs: VideoInputs, config: TangoConfig, ops: Ops) -> tuple:
    """What fixes the statistics and ST-RoPE stages: shapes, dtypes, and their settings."""
    features, timestamps, global_features = inputs.features, inputs.timestamps, inputs.global_features
    return (
        features.device,
        tuple(features.shape),
        features.dtype,
        inputs.saliency.dtype,
        None if timestamps is None else timestamps.dtype,
        None if global_features is None else (tuple(global_features.shape), global_features.dtype),
        tuple(inputs.grid),
        config.segmenter,
        config.resolved_similarity_threshold(),
        config.static_threshold,
        config.sink_positions,
        config.rope_sections,
        config.base_time,
        config.base_space,
        ops.name,
    )


class _GraphRunner:
    """The stage runner of one call: replays (capturing where needed) its video shape's graphs."""

    layout_policy = GRAPH_LAYOUT

    def __init__(self, cache: "TangoGraphs", video: _VideoGraphs, config: TangoConfig, ops: Ops) -> None:
        self.cache, self.video, self.config, self.ops = cache, video, config, ops

    def statistics(self) -> Statistics:
        return self.video.statistics.replay()

    def copy_to_host(self, values: torch.Tensor) -> HostCopy:
        return HostCopy(values, self.video.host_statistics, self.video.statistics_copied)

    def rope(self, statistics: Statistics) -> Points:
        (rope,) = self.video.rope_call(self.config, self.ops).replay()
        return rope

    def select_and_merge(self, layout: DeviceLayout, statistics: Statistics, rope: Points) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.cache._run_layout(self.video, layout, (self.video.extended, statistics.saliency, rope), self.config, self.ops)


class TangoGraphs:
    """A bounded cache of captured graphs, and ``tango_prune`` on top of it.

    Its bounds come from each call's :class:`~tango_core.config.ExecutionOptions`
    (``graph_cache_videos``, ``graph_cache_layouts``, ``graph_capture_after``). ``replays``,
    ``captures`` and ``eager_runs`` count how selection stages ran.
    """

    def __init__(self) -> None:
        self._videos: "OrderedDict[tuple, _VideoGraphs]" = OrderedDict()
        self._lock = threading.Lock()
        self.replays = 0
        self.captures = 0
        self.eager_runs = 0

    def clear(self) -> None:
        """Drop every graph of this cache."""
        with self._lock:
            self._videos.clear()
        gc.collect()  # graphs and the closures they keep alive form reference cycles

    def prune(self, inputs: VideoInputs, config: TangoConfig) -> TangoResult:
        """:func:`tango_core.tango_prune` of validated CUDA inputs, through graphs.

        The work runs in inference mode; the outputs are copied after it (graph outputs are
        overwritten by the next replay), so outside inference mode they are ordinary tensors.
        """
        features = inputs.features
        ops = select_ops(config.execution, features.device)
        with self._lock, on_device_of(features):
            with torch.inference_mode():
                runner = _GraphRunner(self, self._video(inputs, config, ops), config, ops)
                result = run_pipeline(runner, inputs, config)
            kept = result.kept_features.to(features.dtype, copy=True)
            return TangoResult(keep_index=result.keep_index.clone(), kept_features=kept, segments=result.segments)

    def _video(self, inputs: VideoInputs, config: TangoConfig, ops: Ops) -> _VideoGraphs:
        """The graphs of this call's video shape, their static inputs filled with the call's."""
        key = _video_key(inputs, config, ops)
        video = self._videos.pop(key, None)
        if video is None:  # its constructor fills the inputs before capturing
            video = _VideoGraphs(inputs, config, ops)
        else:
            video.fill(inputs)
        self._videos[key] = video
        while len(self._videos) > config.execution.graph_cache_videos:
            self._videos.popitem(last=False)
        return video

    def _run_layout(self, video: _VideoGraphs, layout: DeviceLayout, inputs: tuple, config: TangoConfig, ops: Ops):
        execution = config.execution
        key = (layout.key, config.num_neighbors, config.beta, config.own_anchor_merge, ops.name)
        graph = video.layouts.pop(key, None)
        if graph is None:
            seen = video.seen.get(key, 0) + 1
            if len(video.seen) > 64 * execution.graph_cache_layouts:
                video.seen.clear()
            video.seen[key] = seen
            if seen < execution.graph_capture_after:
                self.eager_runs += 1
                return run_layout_stage(layout, *inputs, config, ops)
            # A layout that already ran eagerly has nothing left to initialise: no warm-up run.
            warm_up = execution.graph_capture_after < 2
            graph = _LayoutGraph(layout, lambda: inputs, config, ops, video.pool, warm_up=warm_up)
            self.captures += 1
        else:
            graph.upload(layout)
        video.layouts[key] = graph
        while len(video.layouts) > execution.graph_cache_layouts:
            video.layouts.popitem(last=False)
        self.replays += 1
        return graph.call.replay()


_CACHE = TangoGraphs()


def graph_cache() -> TangoGraphs:
    """The graph cache that :func:`tango_core.tango_prune` uses (one per process)."""
    return _CACHE


def clear_cuda_graphs() -> None:
    """Drop every captured graph of :func:`graph_cache`, the cached ST-RoPE tables, and their
    memory (e.g. before loading another model)."""
    _CACHE.clear()
    clear_rope_tables()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

"""Padded layouts of the device stage (tango_core.layout) and the CUDA-graph path."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tango_core import ExecutionOptions, TangoConfig, tango_prune
from tango_core.layout import (
    LayoutPolicy,
    _offsets,
    _TableWriter,
    bucket_size,
    exact_size,
    merge_groups,
    packed_size,
    power_of_two_size,
    unpack,
)
from tango_core.pipeline import prune_eagerly
from tango_core.testing.synthetic import structured_clip
from tango_core.types import VideoInputs

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_bucket_sizes_are_the_geometric_series():
    assert [bucket_size(n) for n in range(0, 18)] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 10, 12, 12, 14, 14, 16, 16, 20]
    assert bucket_size(97) == 112 and bucket_size(96) == 96 and bucket_size(1025) == 1280
    for n in range(1, 5000):
        assert n <= bucket_size(n) <= 1.25 * n


def _pack(arrays, out):
    """Write the tables into ``out`` (uint8, at least ``packed_size`` bytes) at their offsets."""
    spec = tuple((name, array.dtype.str, tuple(array.shape)) for name, array in arrays.items())
    offsets, _ = _offsets(spec)
    for array, offset in zip(arrays.values(), offsets):
        out[offset : offset + array.nbytes] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def test_pack_round_trip_keeps_dtypes_shapes_and_values():
    arrays = {
        "a": np.arange(5, dtype=np.int64),
        "b": np.array([[True, False, True]]),
        "c": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
    }
    spec = tuple((name, a.dtype.str, a.shape) for name, a in arrays.items())
    buffer = np.zeros(packed_size(spec), dtype=np.uint8)
    _pack(arrays, buffer)
    views = unpack(torch.from_numpy(buffer), spec)
    for name, array in arrays.items():
        assert views[name].numpy().dtype == array.dtype
        np.testing.assert_array_equal(views[name].numpy(), array)
    # The layout's own writer packs the same bytes.
    writer = _TableWriter()
    for name, array in arrays.items():
        writer.add(name, array.dtype, array.shape, lambda view, array=array: np.copyto(view, array))
    written_spec, packed = writer.build()
    assert written_spec == tuple((name, dtype, tuple(shape)) for name, dtype, shape in spec)
    assert packed.nbytes == packed_size(spec)
    views = unpack(torch.from_numpy(packed), written_spec)
    for name, array in arrays.items():
        np.testing.assert_array_equal(views[name].numpy(), array)


def test_merge_groups_partition_and_bound_padding():
    sizes = np.array([5, 300, 7, 40, 41, 290, 6, 1000])
    for size_fn in (exact_size, bucket_size):
        groups = merge_groups(sizes, size_fn, slack=2.0, small=0)
        assert sorted(np.concatenate(groups).tolist()) == list(range(len(sizes)))
        for group in groups:
            padded = size_fn(len(group)) * size_fn(int(sizes[group].max())) ** 2
            assert len(group) == 1 or padded <= 2.0 * (sizes[group] ** 2).sum()


@st.composite
def cases(draw):
    num_frames = draw(st.integers(1, 12))
    grid = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    regime = draw(st.sampled_from(["static", "mixed", "dynamic"]))
    clip = structured_clip(num_frames, grid, 12, regime, min(3, num_frames), draw(st.integers(0, 9999)))
    config = TangoConfig(
        retention_ratio=draw(st.sampled_from([0.05, 0.1, 0.2, 0.5, 0.9])),
        segmenter=draw(st.sampled_from(["holitom", "fastvid"])),
        context_ratio=draw(st.sampled_from([0.0, 0.4, 1.0])),
        num_neighbors=draw(st.integers(1, 8)),
        exact_budget=draw(st.booleans()),
        own_anchor_merge=draw(st.booleans()),
    )
    slack, small = draw(st.sampled_from([(4.0, 1 << 22), (1.5, 1 << 20), (1.0, 0), (100.0, 1 << 30)]))
    coarse = draw(st.sampled_from([None, power_of_two_size]))
    return clip, config, LayoutPolicy(bucket_size, slack, small, coarse)


def _video(clip):
    return VideoInputs(clip.features, clip.saliency, clip.grid, clip.timestamps)


@SETTINGS
@given(cases())
def test_padded_layout_gives_the_unpadded_result(case):
    """What the CUDA graphs run (bucket-padded tables, coarser padding of cheap sizes, any grouping
    of pools) equals the unpadded pipeline exactly."""
    clip, config, policy = case
    with torch.inference_mode():
        exact = prune_eagerly(_video(clip), config)
        padded = prune_eagerly(_video(clip), config, policy)
    assert torch.equal(exact.keep_index, padded.keep_index)
    torch.testing.assert_close(exact.kept_features, padded.kept_features, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("capture_after", [1, 2])
def test_cuda_graphs_match_eager_and_survive_replays(capture_after):
    from tango_core.graphs import GRAPH_LAYOUT, TangoGraphs

    graphs = TangoGraphs()
    config = TangoConfig(retention_ratio=0.15, execution=ExecutionOptions(graph_capture_after=capture_after))
    clips = [structured_clip(8, (6, 6), 48, regime, 2, seed, device="cuda") for regime in ("static", "dynamic") for seed in (0, 1)]
    for _ in range(4):  # eager runs, captures, then replays on refilled buffers
        for clip in clips:
            graphed = graphs.prune(_video(clip), config)
            with torch.inference_mode():
                eager = prune_eagerly(_video(clip), config, GRAPH_LAYOUT)
            assert torch.equal(graphed.keep_index, eager.keep_index)
            torch.testing.assert_close(graphed.kept_features, eager.kept_features)
    assert graphs.captures >= 1 and graphs.replays >= len(clips)
    with pytest.raises(ValueError, match="NaN"):  # checks still run on the graph path
        bad = clips[0].features.clone()
        bad[0, 0, 0] = float("nan")
        tango_prune(bad, clips[0].saliency, clips[0].grid, clips[0].timestamps, config)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_cache_stays_within_its_bounds_and_clears():
    from tango_core.graphs import GRAPH_LAYOUT, TangoGraphs

    graphs = TangoGraphs()
    bounds = ExecutionOptions(graph_cache_videos=1, graph_cache_layouts=1, graph_capture_after=1)
    config = TangoConfig(retention_ratio=0.2, execution=bounds)
    small = [structured_clip(6, (4, 4), 24, regime, 2, 0, device="cuda") for regime in ("static", "dynamic")]
    large = structured_clip(10, (5, 5), 24, "mixed", 2, 0, device="cuda")
    for clip in small + [large] + small:
        result = graphs.prune(_video(clip), config)
        with torch.inference_mode():
            eager = prune_eagerly(_video(clip), config, GRAPH_LAYOUT)
        assert torch.equal(result.keep_index, eager.keep_index)
        assert len(graphs._videos) == 1
        assert all(len(video.layouts) <= 1 for video in graphs._videos.values())
    graphs.clear()
    assert not graphs._videos


class _ReplayedCall:
    """Stand-in for a captured CUDA graph on the CPU: replays recompute into the same tensors."""

    def __init__(self, function, pool, warm_up=True):
        self.function = function
        self.outputs = function()
        self.calls = 0

    def replay(self):
        self.calls += 1
        for old, new in zip(self.outputs, self.function()):
            old.copy_(new)
        return self.outputs


class _NoEvent:
    def record(self):
        pass

    def synchronize(self):
        pass


def test_graph_cache_logic_on_cpu(monkeypatch):
    """The cache's bookkeeping (video shapes, layout keys, eager first sight, capture, replays of
    refilled buffers, output copies, bounds) with graphs replaced by recomputation."""
    from tango_core import graphs as graph_module

    monkeypatch.setattr(graph_module, "CapturedCall", _ReplayedCall)
    monkeypatch.setattr(torch.cuda, "Event", _NoEvent)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    cache = graph_module.TangoGraphs()
    config = TangoConfig(retention_ratio=0.2, execution=ExecutionOptions(graph_cache_videos=2, graph_cache_layouts=2))
    # Pairs of clips whose plans differ but share a padded layout shape, so replays must upload.
    pairs = [("static", 3), ("static", 6), ("dynamic", 0), ("dynamic", 4)]
    clips = [structured_clip(6, (4, 4), 24, regime, 2, seed) for regime, seed in pairs]
    other_shape = structured_clip(5, (3, 3), 24, "mixed", 2, 0)
    outputs = []
    for _ in range(3):
        for clip in clips + [other_shape]:
            result = cache.prune(_video(clip), config)
            with torch.inference_mode():
                expected = prune_eagerly(_video(clip), config, graph_module.GRAPH_LAYOUT)
            assert torch.equal(result.keep_index, expected.keep_index)
            assert torch.equal(result.kept_features, expected.kept_features)
            assert not result.kept_features.is_inference()
            outputs.append(result)
            assert len(cache._videos) <= 2 and all(len(v.layouts) <= 2 for v in cache._videos.values())
    assert cache.eager_runs >= 1 and cache.captures >= 1 and cache.replays >= 1
    # Results handed out earlier are copies: later replays did not overwrite them.
    first = clips[0]
    again = prune_eagerly(_video(first), config)
    assert torch.equal(outputs[0].keep_index, again.keep_index)
    identity = cache.prune(_video(first), TangoConfig(1.0))
    assert torch.equal(identity.kept_features, first.features.reshape(-1, 24))
    cache.clear()
    assert not cache._videos


def _graphs_on_cpu(monkeypatch):
    """Let the graph cache run on the CPU, graphs replaced by recomputation."""
    from tango_core import graphs as graph_module

    monkeypatch.setattr(graph_module, "CapturedCall", _ReplayedCall)
    monkeypatch.setattr(torch.cuda, "Event", _NoEvent)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)


def test_graph_cache_bounds_follow_the_execution_options(monkeypatch):
    from tango_core.graphs import TangoGraphs

    _graphs_on_cpu(monkeypatch)
    cache = TangoGraphs()
    roomy = TangoConfig(0.2, execution=ExecutionOptions(graph_capture_after=1))
    clips = [structured_clip(6, (4, 4), 24, regime, 2, seed) for regime, seed in (("static", 3), ("dynamic", 0))]
    clips.append(structured_clip(5, (3, 3), 24, "mixed", 2, 0))
    for clip in clips:
        cache.prune(_video(clip), roomy)
    assert len(cache._videos) == 2 and sum(len(video.layouts) for video in cache._videos.values()) == 3
    tight = roomy.with_execution(graph_cache_videos=1, graph_cache_layouts=1)
    result = cache.prune(_video(clips[0]), tight)  # a hit: the other shape and layout are dropped
    assert len(cache._videos) == 1 and all(len(video.layouts) == 1 for video in cache._videos.values())
    assert torch.equal(result.keep_index, prune_eagerly(_video(clips[0]), tight).keep_index)


def test_the_graph_cache_of_tango_prune_is_reachable_and_clears(monkeypatch):
    from tango_core import clear_cuda_graphs, graph_cache
    from tango_core.graphs import TangoGraphs

    _graphs_on_cpu(monkeypatch)
    cache = graph_cache()
    assert isinstance(cache, TangoGraphs) and graph_cache() is cache
    clip = structured_clip(4, (3, 3), 12, "mixed", 2, 1)
    cache.prune(_video(clip), TangoConfig(0.3))
    assert cache._videos
    clear_cuda_graphs()
    assert not cache._videos

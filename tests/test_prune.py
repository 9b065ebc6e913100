"""Invariants of tango_prune on structured clips (spec sections 4, 8, 11)."""

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tango_core import ExecutionOptions, TangoConfig, TangoResult, tango_prune
from tango_core.testing.synthetic import structured_clip

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _reference_budget_bound(segments, num_tokens, ratio, context):
    """Upper bound of what the faithful mode keeps: every unit's ceil rounds up by < 1 per frame."""
    return sum(math.ceil(n * num_tokens * ratio) + 2 * n + 2 for n in segments)


@st.composite
def clips(draw):
    num_frames = draw(st.integers(1, 10))
    height = draw(st.integers(1, 6))
    width = draw(st.integers(1, 6))
    dim = draw(st.sampled_from([6, 12, 24]))
    regime = draw(st.sampled_from(["static", "mixed", "dynamic"]))
    scenes = draw(st.integers(1, max(1, min(3, num_frames))))
    seed = draw(st.integers(0, 10_000))
    return structured_clip(num_frames, (height, width), dim, regime, scenes, seed)


configs = st.builds(
    TangoConfig,
    retention_ratio=st.sampled_from([0.05, 0.1, 0.15, 0.2, 0.37, 0.5, 0.9]),
    segmenter=st.sampled_from(["holitom", "fastvid"]),
    context_ratio=st.sampled_from([0.0, 0.4, 1.0]),
    num_neighbors=st.integers(1, 8),
)


@SETTINGS
@given(clip=clips(), config=configs)
def test_indices_valid_unique_sorted_and_within_budget(clip, config):
    num_frames, num_tokens, dim = clip.features.shape
    result = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, config)
    keep = result.keep_index
    assert keep.dtype == torch.int64 and keep.dim() == 1
    assert keep.numel() >= 1
    assert int(keep.min()) >= 0 and int(keep.max()) < num_frames * num_tokens
    assert torch.all(keep[1:] > keep[:-1])  # sorted and unique
    assert result.kept_features.shape == (keep.numel(), dim)
    assert result.kept_features.dtype == clip.features.dtype
    assert sum(result.segments) == num_frames
    assert keep.numel() <= _reference_budget_bound(result.segments, num_tokens, config.retention_ratio, config.context_ratio)
    assert torch.isfinite(result.kept_features).all()


@SETTINGS
@given(clip=clips(), ratio=st.sampled_from([0.05, 0.1, 0.2, 0.5]), segmenter=st.sampled_from(["holitom", "fastvid"]))
def test_exact_budget_spends_exactly(clip, ratio, segmenter):
    num_frames, num_tokens, _ = clip.features.shape
    config = TangoConfig(retention_ratio=ratio, segmenter=segmenter, exact_budget=True)
    result = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, config)
    assert result.keep_index.numel() == max(1, round(ratio * num_frames * num_tokens))
    assert torch.all(result.keep_index[1:] > result.keep_index[:-1])


def test_faithful_mode_underspends_on_static_clips_and_exact_mode_does_not():
    clip = structured_clip(24, (14, 14), 64, "static", num_scenes=2, seed=3)
    faithful = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, TangoConfig(0.3))
    exact = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, TangoConfig(0.3, exact_budget=True))
    target = round(0.3 * 24 * 196)
    assert faithful.keep_index.numel() < target
    assert exact.keep_index.numel() == target


@SETTINGS
@given(clip=clips(), config=configs)
def test_deterministic_and_inputs_untouched(clip, config):
    features, saliency = clip.features.clone(), clip.saliency.clone()
    first = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, config)
    second = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, config)
    assert torch.equal(first.keep_index, second.keep_index)
    assert torch.equal(first.kept_features, second.kept_features)
    assert torch.equal(clip.features, features) and torch.equal(clip.saliency, saliency)


@SETTINGS
@given(clip=clips())
def test_retention_one_is_identity(clip):
    num_frames, num_tokens, dim = clip.features.shape
    result = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, TangoConfig(1.0))
    assert torch.equal(result.keep_index, torch.arange(num_frames * num_tokens))
    assert torch.equal(result.kept_features, clip.features.reshape(-1, dim))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_follows_fp32_selection(dtype):
    clip = structured_clip(12, (8, 8), 48, "mixed", num_scenes=2, seed=11)
    low = clip.features.to(dtype)
    reference = tango_prune(low.float(), clip.saliency, clip.grid, clip.timestamps, TangoConfig(0.2))
    result = tango_prune(low, clip.saliency.to(dtype).float(), clip.grid, clip.timestamps, TangoConfig(0.2))
    assert result.kept_features.dtype == dtype
    assert torch.equal(result.keep_index, reference.keep_index)
    torch.testing.assert_close(result.kept_features.float(), reference.kept_features.to(dtype).float())


def test_sinks_are_never_selected_as_salient_peaks():
    clip = structured_clip(1, (14, 14), 32, "dynamic", num_scenes=1, seed=2)
    saliency = clip.saliency.clone()
    saliency[:, [5, 6]] = 100.0  # huge attention sinks
    plain = tango_prune(clip.features, saliency, clip.grid, None, TangoConfig(0.05, context_ratio=0.0))
    sunk = tango_prune(clip.features, saliency, clip.grid, None, TangoConfig(0.05, context_ratio=0.0, sink_positions=(5, 6)))
    assert {5, 6} & set(plain.keep_index.tolist())  # neighbours: diversity keeps at least one
    assert not ({5, 6} & set(sunk.keep_index.tolist()))


@pytest.mark.parametrize(
    "shape,grid",
    [((1, 1, 6), (1, 1)), ((2, 4, 6), (2, 2)), ((3, 9, 6), (3, 3)), ((1, 196, 12), (14, 14))],
)
def test_degenerate_inputs_work(shape, grid):
    features = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    saliency = torch.rand(shape[:2], generator=torch.Generator().manual_seed(1))
    for frames in (features, features[:1].expand(shape[0], -1, -1).contiguous()):  # random, all identical
        for ratio in (0.01, 0.1, 0.5):
            result = tango_prune(frames, saliency, grid, None, TangoConfig(ratio))
            assert 1 <= result.keep_index.numel() <= shape[0] * shape[1]
            assert torch.all(result.keep_index[1:] > result.keep_index[:-1])


def test_all_zero_features_do_not_break_clustering():
    result = tango_prune(torch.zeros(4, 16, 6), torch.rand(4, 16), (4, 4), None, TangoConfig(0.25))
    assert torch.all(result.keep_index[1:] > result.keep_index[:-1])
    assert torch.isfinite(result.kept_features).all()


def test_identical_frames_collapse_to_one_segment():
    frame = torch.randn(1, 16, 12)
    result = tango_prune(frame.expand(6, -1, -1).contiguous(), torch.rand(6, 16), (4, 4), None, TangoConfig(0.5))
    assert result.segments == [6]
    # Every position is static: only frame 0 holds tokens, at most ceil(16 * r') of them.
    assert int(result.keep_index.max()) < 16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    clip = structured_clip(16, (14, 14), 64, "mixed", num_scenes=2, seed=5)
    cpu = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, TangoConfig(0.1))
    gpu = tango_prune(clip.features.cuda(), clip.saliency.cuda(), clip.grid, clip.timestamps.cuda(), TangoConfig(0.1))
    assert torch.equal(cpu.keep_index, gpu.keep_index.cpu())


def test_non_contiguous_inputs_match_contiguous():
    clip = structured_clip(6, (6, 6), 16, "mixed", num_scenes=2, seed=9)
    strided = clip.features.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not strided.is_contiguous()
    expected = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, TangoConfig(0.2))
    got = tango_prune(strided, clip.saliency.t().contiguous().t(), clip.grid, clip.timestamps, TangoConfig(0.2))
    assert torch.equal(got.keep_index, expected.keep_index)
    assert torch.equal(got.kept_features, expected.kept_features)


def test_outputs_are_ordinary_tensors_outside_inference_mode():
    clip = structured_clip(4, (4, 4), 8, "mixed", num_scenes=1, seed=1)
    result = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, TangoConfig(0.3))
    assert not result.kept_features.is_inference() and not result.keep_index.is_inference()
    result.kept_features.mul_(2.0)  # in-place use by the caller must work
    with torch.inference_mode():
        inside = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, TangoConfig(0.3))
    assert torch.equal(inside.keep_index, result.keep_index)


def test_fastvid_uses_given_global_features():
    clip = structured_clip(8, (4, 4), 12, "static", num_scenes=1, seed=4)
    # Global features that change completely after frame 3 force a cut there (sim < tau).
    summary = torch.zeros(8, 5)
    summary[:4, 0] = 1.0
    summary[4:, 1] = 1.0
    config = TangoConfig(0.3, segmenter="fastvid", fastvid_cuts=1)
    with_summary = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, config, global_features=summary)
    assert with_summary.segments == [4, 4]
    assert tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, config).segments == [8]


def test_reference_backend_dispatches_after_validation(monkeypatch):
    reference = pytest.importorskip("tango_core.reference", reason="tango_core/reference.py is not there yet")
    calls, original = [], reference.reference_prune

    def recorded(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(reference, "reference_prune", recorded)
    clip = structured_clip(5, (4, 4), 12, "mixed", num_scenes=2, seed=6)
    config = TangoConfig(0.2, execution=ExecutionOptions(backend="reference"))
    result = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, config)
    assert len(calls) == 1
    features, saliency, grid, timestamps, passed_config, global_features = calls[0]
    assert features is clip.features and saliency is clip.saliency and timestamps is clip.timestamps
    assert grid == clip.grid and passed_config is config and global_features is None
    direct = original(clip.features, clip.saliency, clip.grid, clip.timestamps, config)
    assert isinstance(result, TangoResult)
    assert torch.equal(result.keep_index, direct.keep_index)
    assert torch.equal(result.kept_features, direct.kept_features)
    assert result.segments == list(direct.segments)
    # Validation (shapes and values) runs before the reference is reached.
    with pytest.raises(ValueError, match="grid 3x4"):
        tango_prune(clip.features, clip.saliency, (3, 4), clip.timestamps, config)
    bad = clip.features.clone()
    bad[1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match="features contain NaN"):
        tango_prune(bad, clip.saliency, clip.grid, clip.timestamps, config)
    with pytest.raises(ValueError, match="saliency must be non-negative"):
        tango_prune(clip.features, -clip.saliency, clip.grid, clip.timestamps, config)
    sunk = replace(config, sink_positions=(0,))
    negative_sink = clip.saliency.clone()
    negative_sink[:, 0] = -1.0  # sinks are zeroed before the check, as in the fast pipeline
    tango_prune(clip.features, negative_sink, clip.grid, clip.timestamps, sunk)
    assert len(calls) == 2  # the first call and the last; none of the refused ones


def test_execution_options_change_nothing_computed():
    clip = structured_clip(6, (5, 5), 16, "mixed", num_scenes=2, seed=8)
    expected = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, TangoConfig(0.2))
    for execution in (
        ExecutionOptions(cuda_graphs=False),
        ExecutionOptions(fused_kernels=False),
        ExecutionOptions(graph_cache_videos=1, graph_cache_layouts=1, graph_capture_after=1),
    ):
        got = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, TangoConfig(0.2, execution=execution))
        assert torch.equal(got.keep_index, expected.keep_index)
        assert torch.equal(got.kept_features, expected.kept_features)

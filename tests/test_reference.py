"""The readable reference (tango_core/reference.py) against the reference's cases and tango_prune.

All inputs are CPU tensors, on which tango_prune always runs its eager pipeline (no CUDA graphs).
"""


import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tango_core import TangoConfig, tango_prune
from tango_core.reference import ReferenceResult, reference_prune
from tango_core.testing.synthetic import structured_clip

from fidelity_cases import CASES, case_arrays, case_config

def _fidelity(case, **overrides):
    arrays = case_arrays(case)
    config = case_config(case, **overrides)
    inputs = (torch.from_numpy(arrays["feats"]), torch.from_numpy(arrays["sal"]), (case["H"], case["W"]),
              torch.from_numpy(arrays["ts"]), config)
    return arrays, inputs


@pytest.mark.parametrize("case", CASES, ids=[f"case{c['idx']:02d}-{c['seg']}" for c in CASES])
def test_reference_reproduces_the_reference_cases(case):
    arrays, inputs = _fidelity(case)
    result = reference_prune(*inputs)
    assert isinstance(result, ReferenceResult)
    assert result.keep_index.dtype == torch.int64
    assert result.keep_index.shape[0] == case["K"]
    np.testing.assert_array_equal(result.keep_index.numpy(), arrays["keep"])
    expected = arrays["kept_feats"]
    relative = np.abs(result.kept_features.numpy() - expected).max() / np.abs(expected).max()
    assert relative < 1e-5  # the tolerance of test_fidelity.py
    assert sum(result.segments) == case["N"]


@pytest.mark.parametrize("case", CASES, ids=[f"case{c['idx']:02d}" for c in CASES])
def test_own_anchor_merge_matches_tango_prune_on_the_reference_cases(case):
    arrays, inputs = _fidelity(case, own_anchor_merge=True)
    ours, theirs = reference_prune(*inputs), tango_prune(*inputs)
    np.testing.assert_array_equal(ours.keep_index.numpy(), arrays["keep"])
    torch.testing.assert_close(ours.kept_features, theirs.kept_features, rtol=1e-5, atol=1e-6)


@st.composite
def problems(draw):
    """A structured clip (spec 11) and a configuration touching every algorithm field."""
    num_frames = draw(st.sampled_from([1, 2, 3, 5, 8, 12, 16]))
    grid = draw(st.sampled_from([(1, 1), (1, 5), (3, 2), (4, 4), (6, 5), (8, 8), (9, 12), (14, 14)]))
    dim = draw(st.sampled_from([6, 12, 24, 48]))
    regime = draw(st.sampled_from(["static", "mixed", "dynamic"]))
    scenes = draw(st.integers(1, min(3, num_frames)))
    clip = structured_clip(num_frames, grid, dim, regime, scenes, seed=draw(st.integers(0, 10**6)))
    num_tokens = grid[0] * grid[1]
    sinks = draw(st.lists(st.integers(0, num_tokens - 1), max_size=3, unique=True))
    rope_sections = draw(st.sampled_from([None, (dim - 4, 2, 2), (0, 2, dim - 2)]))
    config = TangoConfig(
        retention_ratio=draw(st.sampled_from([0.1, 0.15, 0.2, 0.5])),
        segmenter=draw(st.sampled_from(["holitom", "fastvid"])),
        similarity_threshold=draw(st.sampled_from([None, None, 0.5, 0.9])),
        static_threshold=draw(st.sampled_from([0.8, 0.8, 0.6, 0.95])),
        context_ratio=draw(st.sampled_from([0.4, 0.4, 0.0, 0.2, 1.0])),
        num_neighbors=draw(st.sampled_from([7, 1, 3])),
        alpha=draw(st.sampled_from([1.5, 1.0, 2.5])),
        beta=draw(st.sampled_from([0.6, 0.0, 1.0])),
        base_time=draw(st.sampled_from([10000.0, 10.0])),
        base_space=draw(st.sampled_from([1000.0, 10.0])),
        rope_sections=rope_sections,
        sink_positions=tuple(sinks),
        fastvid_cuts=draw(st.sampled_from([8, 1, 3])),
        exact_budget=draw(st.booleans()),
        own_anchor_merge=draw(st.booleans()),
    )
    timestamps = clip.timestamps if draw(st.booleans()) else None
    global_features = None
    if config.segmenter == "fastvid" and draw(st.booleans()):
        global_features = torch.randn(num_frames, 5, generator=torch.Generator().manual_seed(num_frames))
    return (clip.features, clip.saliency, clip.grid, timestamps, config, global_features)


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_reference_agrees_with_tango_prune_on_structured_clips(problem):
    expected, result = tango_prune(*problem), reference_prune(*problem)
    assert result.segments == expected.segments
    torch.testing.assert_close(result.keep_index, expected.keep_index, rtol=0, atol=0)
    torch.testing.assert_close(result.kept_features, expected.kept_features, rtol=1e-5, atol=1e-6)
    if problem[4].exact_budget:
        features = problem[0]
        assert result.keep_index.numel() == max(1, round(problem[4].retention_ratio * features.shape[0] * features.shape[1]))


def _two_point_pool_clip():
    clip = structured_clip(5, (8, 4), 6, "dynamic", 3, seed=331670)
    config = TangoConfig(retention_ratio=0.1, context_ratio=1.0, num_neighbors=3, alpha=1.0,
                         sink_positions=(31, 20, 9), exact_budget=True)
    return clip.features, clip.saliency, clip.grid, clip.timestamps, config


def test_two_point_pool_keeps_the_lower_index():
    """The static pseudo-frame of segment 0 (frames 0-1) holds positions 2 and 15 and gets one anchor:
    two points have exactly equal densities and scores, so the lower index, 2, wins (spec 4.6)."""
    result = reference_prune(*_two_point_pool_clip())
    assert 2 in result.keep_index.tolist() and 15 not in result.keep_index.tolist()


@pytest.mark.xfail(strict=True, reason=(
    "tango_prune: a 2-point pool batched with a 60-point pool gets float32 distances d(0,1) != d(1,0) "
    "(1 ulp, batched cdist via matmul), so its densities differ and position 15 beats the exact tie's "
    "lower index 2 (spec 4.6 ties by lower index)"))
def test_tango_prune_two_point_pool_keeps_the_lower_index():
    problem = _two_point_pool_clip()
    torch.testing.assert_close(tango_prune(*problem).keep_index, reference_prune(*problem).keep_index, rtol=0, atol=0)


def test_ratio_one_returns_every_token_unchanged():
    clip = structured_clip(6, (5, 4), 12, "static", 2, seed=7)
    config = TangoConfig(retention_ratio=1.0)
    result = reference_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, config)
    assert torch.equal(result.keep_index, torch.arange(6 * 20))
    assert torch.equal(result.kept_features, clip.features.reshape(-1, 12))
    assert result.segments == tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, config).segments


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("exact_budget", [False, True])
def test_half_precision_inputs(dtype, exact_budget):
    """Spec 4.5: half inputs are computed in float32, so the keep set equals that of the float32
    inputs of the same values, and the kept features are theirs cast to the input dtype."""
    clip = structured_clip(10, (6, 6), 24, "mixed", 2, seed=11, dtype=dtype)
    config = TangoConfig(retention_ratio=0.2, exact_budget=exact_budget)
    half = reference_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, config)
    full = reference_prune(clip.features.float(), clip.saliency.float(), clip.grid, clip.timestamps, config)
    assert half.kept_features.dtype == dtype
    assert torch.equal(half.keep_index, full.keep_index)
    assert torch.equal(half.kept_features, full.kept_features.to(dtype))
    expected = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, config)
    assert torch.equal(half.keep_index, expected.keep_index)
    torch.testing.assert_close(half.kept_features, expected.kept_features)


# The fast path's other executors against the oracle: the fused Triton kernels (on the CPU in
# Triton's interpreter) and the CUDA graphs (where there is a GPU).
ORACLE_CLIPS = [("mixed", 0.1, "holitom"), ("dynamic", 0.2, "fastvid"), ("static", 0.15, "holitom")]


def _oracle_clip(regime: str, ratio: float, segmenter: str, device: str):
    clip = structured_clip(6, (6, 6), 24, regime, num_scenes=2, seed=7)
    inputs = [x.to(device) for x in (clip.features, clip.saliency, clip.timestamps)]
    return inputs, clip.grid, TangoConfig(retention_ratio=ratio, segmenter=segmenter)


@pytest.mark.parametrize("regime,ratio,segmenter", ORACLE_CLIPS)
def test_fused_kernels_keep_what_the_reference_keeps(regime, ratio, segmenter, monkeypatch):
    from tango_core import ops

    monkeypatch.setattr(ops, "kernels_run_on", lambda device: True)  # kernels on any device
    device = "cuda" if torch.cuda.is_available() else "cpu"
    (features, saliency, timestamps), grid, config = _oracle_clip(regime, ratio, segmenter, device)
    fused = tango_prune(features, saliency, grid, timestamps, config.with_execution(cuda_graphs=False))
    oracle = reference_prune(features.cpu(), saliency.cpu(), grid, timestamps.cpu(), config)
    assert torch.equal(fused.keep_index.cpu(), oracle.keep_index)
    torch.testing.assert_close(fused.kept_features.cpu(), oracle.kept_features, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("regime,ratio,segmenter", ORACLE_CLIPS)
def test_cuda_graphs_keep_what_the_reference_keeps(regime, ratio, segmenter):
    (features, saliency, timestamps), grid, config = _oracle_clip(regime, ratio, segmenter, "cuda")
    oracle = reference_prune(features.cpu(), saliency.cpu(), grid, timestamps.cpu(), config)
    for _ in range(3):  # first sight (eager on the padded tables), capture, replay
        graphed = tango_prune(features, saliency, grid, timestamps, config)
        assert torch.equal(graphed.keep_index.cpu(), oracle.keep_index)
        torch.testing.assert_close(graphed.kept_features.cpu(), oracle.kept_features, rtol=1e-5, atol=1e-6)

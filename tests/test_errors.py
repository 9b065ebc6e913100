"""Bad input gets one clear ValueError naming the argument."""

import pytest
import torch

from tango_core import ExecutionOptions, TangoConfig, tango_prune

F = torch.randn(2, 4, 6)
S = torch.rand(2, 4)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan"), "0.1"])
def test_retention_ratio_range(ratio):
    with pytest.raises(ValueError, match="retention_ratio"):
        TangoConfig(retention_ratio=ratio)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(context_ratio=1.5), "context_ratio"),
        (dict(segmenter="kmeans"), "segmenter"),
        (dict(rope_sections=(3, 2, 1)), "rope_sections"),
        (dict(num_neighbors=0), "num_neighbors"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TangoConfig(**kwargs)


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.randn(4, 6), S, (2, 2)), r"features must be a tensor of shape \(N, L, D\)"),
        ((torch.randn(0, 4, 6), torch.rand(0, 4), (2, 2)), "empty video"),
        ((F, S, (3, 2)), "grid 3x2"),
        ((F, torch.rand(2, 5), (2, 2)), "saliency must have shape"),
        ((F, S, (2, 2), torch.zeros(3)), "timestamps must have shape"),
        ((F.to(torch.int64), S, (2, 2)), "floating point"),
    ],
)
def test_shape_errors(args, match):
    with pytest.raises(ValueError, match=match):
        tango_prune(*args)


def test_value_errors():
    bad = F.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="features contain NaN"):
        tango_prune(bad, S, (2, 2))
    with pytest.raises(ValueError, match="saliency contains NaN"):
        tango_prune(F, torch.full((2, 4), float("inf")), (2, 2))
    with pytest.raises(ValueError, match="saliency must be non-negative"):
        tango_prune(F, -S, (2, 2))
    with pytest.raises(ValueError, match="timestamps contain NaN"):
        tango_prune(F, S, (2, 2), torch.tensor([0.0, float("nan")]))


def test_sink_and_section_errors():
    with pytest.raises(ValueError, match="sink_positions"):
        tango_prune(F, S, (2, 2), config=TangoConfig(sink_positions=(4,)))
    with pytest.raises(ValueError, match="rope_sections"):
        tango_prune(F, S, (2, 2), config=TangoConfig(rope_sections=(2, 2, 4)))
    with pytest.raises(ValueError, match="rope_sections"):
        tango_prune(torch.randn(2, 4, 7), S, (2, 2))
    with pytest.raises(ValueError, match="global_features"):
        tango_prune(F, S, (2, 2), config=TangoConfig(segmenter="fastvid"), global_features=torch.randn(3, 5))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(backend="slow"), "backend"),
        (dict(graph_cache_videos=0), "graph_cache_videos"),
        (dict(graph_cache_layouts=-1), "graph_cache_layouts"),
        (dict(graph_capture_after=1.5), "graph_capture_after"),
    ],
)
def test_execution_option_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExecutionOptions(**kwargs)


def test_execution_must_be_execution_options():
    with pytest.raises(ValueError, match="execution"):
        TangoConfig(execution={"cuda_graphs": False})

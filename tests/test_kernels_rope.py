"""Fused statistics and ST-RoPE kernels against their PyTorch forms (spec sections 3 and 4.1).

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py), so the sizes stay small.
"""

import pytest

pytest.importorskip("triton")

import torch  # noqa: E402

from tango_core import segmentation  # noqa: E402
from tango_core.config import resolve_rope_sections  # noqa: E402
from tango_core.dpc import split_scaled_points  # noqa: E402
from tango_core.kernels.rope import MAX_STATISTICS_DIM, rope_split, token_statistics  # noqa: E402
from tango_core.ops import PYTORCH_CUDA  # noqa: E402
from tango_core.rope import rotate_unit_features_scaled, swap_group_halves  # noqa: E402
from tango_core.rope_tables import space_half_tables, time_half_frequencies  # noqa: E402
from tango_core.segmentation import consecutive_token_similarity  # noqa: E402
from tango_core.types import SPLIT_SCALE, SplitPoints  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BASE_TIME, BASE_SPACE = 10000.0, 1000.0
SPARE_ROWS = 5
SPARE_VALUE = -7.25


def _features(num_frames, num_tokens, dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(num_frames, num_tokens, dim, generator=gen) * 3.0
    # Correlated frames, as in video; and one all-zero token (its unit row is 0).
    features = features + 2.0 * features[:1]
    features[0, 0] = 0.0
    return features.to(dtype).to(DEVICE)


def _times(num_frames, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(num_frames, generator=gen) * 60.0 + 0.37).to(DEVICE)


def _extended(features):
    num_frames, num_tokens, dim = features.shape
    return torch.full((num_frames * num_tokens + SPARE_ROWS, dim), SPARE_VALUE, device=features.device)


def _unit(extended, norms):
    num_frames, num_tokens = norms.shape
    features32 = extended[: num_frames * num_tokens].view(num_frames, num_tokens, -1)
    return features32 / norms.clamp_min(1e-12).unsqueeze(-1)


def _scaled_reference(extended, norms, times, grid, sections):
    unit = _unit(extended, norms)
    scaled = rotate_unit_features_scaled(unit, grid, times, sections, BASE_TIME, BASE_SPACE, SPLIT_SCALE)
    scaled = scaled.view(-1, extended.shape[-1])
    split = PYTORCH_CUDA.rope_points(extended, norms, times, grid, sections, BASE_TIME, BASE_SPACE)  # the PyTorch form
    reference = split_scaled_points(scaled)
    assert all(torch.equal(a, b) for a, b in zip(vars(split).values(), vars(reference).values()))
    return scaled


def _split_variants(extended, norms, times, grid, sections):
    """The split of the rotation computed exactly as PyTorch's CUDA kernels do, in both ways its
    one fused multiply-add may be evaluated (fused on GPUs, unfused in Triton's interpreter)."""
    unit = _unit(extended, norms)
    fused = torch.empty_like(unit)
    unfused = torch.empty_like(unit)
    start = 0
    for group, size in enumerate(sections):
        half = size // 2
        if half:
            if group == 0:
                angles = times.float().view(-1, 1, 1) * time_half_frequencies(sections, BASE_TIME, unit.device)
                cos, sin = angles.cos() * SPLIT_SCALE, angles.sin() * SPLIT_SCALE
            else:
                cos, sin = space_half_tables(grid, sections, BASE_SPACE, group, SPLIT_SCALE, unit.device)
            first, second = unit[..., start : start + half], unit[..., start + half : start + size]
            out_first = (first * cos) - (second * sin)
            fused[..., start : start + half] = out_first
            unfused[..., start : start + half] = out_first
            second_cos = second * cos
            exact = first.double() * sin.double() + second_cos.double()  # the product is exact in float64
            fused[..., start + half : start + size] = exact.float()
            unfused[..., start + half : start + size] = (first * sin) + second_cos
        start += size
    dim = extended.shape[-1]
    return split_scaled_points(fused.view(-1, dim)), split_scaled_points(unfused.view(-1, dim))


def _assert_statistics(features, extended, norms, similarity):
    num_frames, num_tokens, dim = features.shape
    rows = num_frames * num_tokens
    features32 = features.float()
    assert torch.equal(extended[:rows], features32.view(rows, dim))
    assert (extended[rows:] == SPARE_VALUE).all()
    expected_norms = torch.linalg.vector_norm(features32, dim=-1)
    assert norms.dtype == torch.float32 and norms.shape == (num_frames, num_tokens)
    torch.testing.assert_close(norms, expected_norms, rtol=1e-6, atol=1e-6)
    unit = features32 / expected_norms.clamp_min(1e-12).unsqueeze(-1)
    assert similarity.dtype == torch.float32 and similarity.shape == (num_frames - 1, num_tokens)
    torch.testing.assert_close(similarity, consecutive_token_similarity(unit), rtol=1e-6, atol=1e-6)


def _assert_split(got, scaled, unit, sections, variants):
    rows, dim = scaled.shape
    assert isinstance(got, SplitPoints)
    assert got.high.dtype == got.low.dtype == torch.float16 and got.high.shape == got.low.shape == (rows, dim)
    assert got.squared_norms.dtype == torch.float32 and got.squared_norms.shape == (rows,)
    reference = split_scaled_points(scaled)
    # high is the reference's, except where the float32 value lies within rounding error of an
    # fp16 rounding boundary (the two candidates are then neighbours, the value between them).
    # The rounding error is that of the two products of a rotated channel (x * cos, x' * sin):
    # PyTorch's CPU and CUDA kernels may fuse their difference or not.
    differs = got.high != reference.high
    boundary = (got.high[differs].double() + reference.high[differs].double()) / 2
    terms = (unit.abs() + swap_group_halves(unit, sections).abs()).view(rows, dim) * SPLIT_SCALE
    error = 2 * torch.finfo(torch.float32).eps * terms[differs].double()
    assert ((scaled[differs].double() - boundary).abs() <= error).all()
    torch.testing.assert_close(got.high.float() + got.low.float(), scaled, rtol=0, atol=1e-6 * SPLIT_SCALE)
    torch.testing.assert_close(got.squared_norms, reference.squared_norms, rtol=1e-5, atol=1e-7)
    # Bitwise: the division and every product rounded as PyTorch's kernels round them.
    fused, unfused = variants
    matches = ((got.high == fused.high) & (got.low == fused.low)) | ((got.high == unfused.high) & (got.low == unfused.low))
    assert matches.all()


@pytest.mark.parametrize(
    "num_frames, grid, dim, dtype",
    [
        (1, (1, 1), 36, torch.float32),
        (2, (2, 3), 62, torch.float16),
        (5, (2, 3), 37, torch.bfloat16),
        (5, (14, 14), 36, torch.float32),
        (2, (2, 3), 3584, torch.bfloat16),
        (35, (1, 3), 12, torch.float16),  # several programs along the frames
    ],
)
def test_token_statistics(num_frames, grid, dim, dtype):
    features = _features(num_frames, grid[0] * grid[1], dim, dtype)
    before = features.clone()
    extended = _extended(features)
    norms, similarity = token_statistics(features, extended)
    assert torch.equal(features, before)
    _assert_statistics(features, extended, norms, similarity)
    pytorch_extended = _extended(features)  # the PyTorch form meets the same checks
    _assert_statistics(features, pytorch_extended, *segmentation.token_statistics(features, pytorch_extended))


@pytest.mark.parametrize(
    "num_frames, grid, dim, sections, dtype",
    [
        (1, (1, 1), 36, (12, 12, 12), torch.float32),
        (2, (2, 3), 62, None, torch.float16),
        (5, (2, 3), 36, (12, 12, 12), torch.bfloat16),
        (5, (14, 14), 36, (12, 12, 12), torch.float32),
        (2, (2, 3), 3584, None, torch.float32),
        (3, (2, 3), 16, (0, 8, 8), torch.float32),  # no time group
        (2, (3, 1), 12, (12, 0, 0), torch.float16),  # time only
        (1, (1, 2), 2108, (2100, 4, 4), torch.float32),  # a half-group wider than one tile
    ],
)
def test_rope_split(num_frames, grid, dim, sections, dtype):
    sections = resolve_rope_sections(dim, sections)
    features = _features(num_frames, grid[0] * grid[1], dim, dtype)
    times = _times(num_frames)
    extended = _extended(features)
    norms, _ = token_statistics(features, extended)
    inputs = [extended, norms, times]
    before = [tensor.clone() for tensor in inputs]
    got = rope_split(extended, norms, times, grid, sections, BASE_TIME, BASE_SPACE)
    assert all(torch.equal(tensor, copy) for tensor, copy in zip(inputs, before))
    scaled = _scaled_reference(extended, norms, times, grid, sections)
    unit = _unit(extended, norms)
    _assert_split(got, scaled, unit, sections, _split_variants(extended, norms, times, grid, sections))


def test_rope_split_of_reference_norms():
    """rope_split only reads the first N * L rows and the given norms, whoever computed them."""
    num_frames, grid, dim = 3, (2, 2), 30
    sections = resolve_rope_sections(dim, None)
    features = _features(num_frames, 4, dim, torch.float32, seed=3)
    extended = _extended(features)
    extended[: num_frames * 4] = features.view(-1, dim)
    norms = torch.linalg.vector_norm(features, dim=-1)
    times = _times(num_frames, seed=4)
    got = rope_split(extended, norms, times, grid, sections, BASE_TIME, BASE_SPACE)
    scaled = _scaled_reference(extended, norms, times, grid, sections)
    unit = _unit(extended, norms)
    _assert_split(got, scaled, unit, sections, _split_variants(extended, norms, times, grid, sections))


def test_wide_features_are_refused():
    features = torch.zeros(1, 1, MAX_STATISTICS_DIM + 2, device=DEVICE)
    with pytest.raises(ValueError, match="feature dimensions up to"):
        token_statistics(features, _extended(features))


def test_bad_arguments_are_refused():
    features = _features(2, 6, 12, torch.float32)
    extended = _extended(features)
    with pytest.raises(ValueError, match="no room"):
        token_statistics(features, extended[:5])
    norms, _ = token_statistics(features, extended)
    with pytest.raises(ValueError, match="grid"):
        rope_split(extended, norms, _times(2), (2, 2), (4, 4, 4), BASE_TIME, BASE_SPACE)
    with pytest.raises(ValueError, match="sections"):
        rope_split(extended, norms, _times(2), (2, 3), (4, 4, 2), BASE_TIME, BASE_SPACE)

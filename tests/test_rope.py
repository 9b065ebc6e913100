"""ST-RoPE against a direct, loop-based formula (spec section 3)."""

import math

import pytest
import torch

from tango_core import st_rope
from tango_core.config import default_rope_sections


def _direct(features, grid, times, sections, base_time, base_space):
    num_frames, num_tokens, dim = features.shape
    out = torch.empty(num_frames, num_tokens, dim, dtype=torch.float64)
    for n in range(num_frames):
        for l in range(num_tokens):
            x = features[n, l].double()
            x = x / x.norm()
            positions = (float(times[n]), float(l // grid[1]), float(l % grid[1]))
            bases = (base_time, base_space, base_space)
            chunks, start = [], 0
            for size, position, base in zip(sections, positions, bases):
                group = x[start : start + size]
                half = size // 2
                rotated = torch.empty(size, dtype=torch.float64)
                for j in range(half):
                    angle = position * base ** (-2 * j / size)
                    a, b = group[j], group[j + half]
                    rotated[j] = a * math.cos(angle) - b * math.sin(angle)
                    rotated[j + half] = b * math.cos(angle) + a * math.sin(angle)
                chunks.append(rotated)
                start += size
            out[n, l] = torch.cat(chunks)
    return out


def test_default_sections():
    assert default_rope_sections(3584) == (1196, 1194, 1194)
    assert default_rope_sections(96) == (32, 32, 32)


@pytest.mark.parametrize("sections", [None, (4, 8, 4)])
def test_matches_direct_formula(sections):
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(3, 6, 16, generator=gen)
    times = torch.tensor([0.0, 2.5, 7.25])
    got = st_rope(features, (2, 3), times, sections=sections, base_time=10000.0, base_space=1000.0)
    resolved = sections or default_rope_sections(16)
    expected = _direct(features, (2, 3), times, resolved, 10000.0, 1000.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=2e-6, rtol=0)


def test_rotation_preserves_norm_and_half_precision_input():
    features = torch.randn(4, 9, 12).to(torch.bfloat16)
    out = st_rope(features, (3, 3))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4, 9), atol=1e-5, rtol=0)


def test_odd_sections_rejected():
    with pytest.raises(ValueError, match="rope_sections"):
        st_rope(torch.randn(1, 4, 10), (2, 2), sections=(3, 4, 3))
    with pytest.raises(ValueError, match="summing to the feature dimension"):
        st_rope(torch.randn(1, 4, 12), (2, 2), sections=(4, 4, 2))


@pytest.mark.parametrize("dim, grid", [(96, (14, 14)), (3584, (13, 13)), (12, (2, 3)), (10, (1, 1))])
def test_scaled_group_rotation_is_bitwise_the_scaled_rope(dim, grid):
    """The low-traffic form used on GPUs equals 2**10 times the plain form, bit for bit."""
    from tango_core.config import resolve_rope_sections
    from tango_core.rope import rotate_unit_features, rotate_unit_features_scaled

    generator = torch.Generator().manual_seed(dim)
    num_tokens = grid[0] * grid[1]
    unit = torch.nn.functional.normalize(torch.randn(5, num_tokens, dim, generator=generator), dim=-1)
    times = torch.rand(5, generator=generator) * 30
    sections = resolve_rope_sections(dim, None)
    plain = rotate_unit_features(unit, grid, times, sections, 10000.0, 1000.0)
    scaled = rotate_unit_features_scaled(unit, grid, times, sections, 10000.0, 1000.0, 1024.0)
    assert torch.equal(plain * 1024.0, scaled)

"""The fused residual addition and layer norm against PyTorch's two ops.

Without a GPU the kernel runs in Triton's interpreter (tests/conftest.py), so the sizes stay small.
"""

import pytest

pytest.importorskip("triton")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tango_core.kernels.layer_norm import add_layer_norm  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5, 72), (7, 1152), (1, 1, 20)])
def test_sum_and_norm_equal_the_two_pytorch_ops(dtype, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    hidden = (torch.randn(shape, generator=gen) * 4 + 1.5).to(dtype).to(DEVICE)
    delta = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)
    weight = (torch.rand(shape[-1], generator=gen) + 0.5).to(dtype).to(DEVICE)
    bias = torch.randn(shape[-1], generator=gen).to(dtype).to(DEVICE)
    total, normed = add_layer_norm(hidden, delta, weight, bias, 1e-6)
    expected_total = hidden + delta
    assert total.dtype == normed.dtype == dtype and total.shape == normed.shape == hidden.shape
    if dtype == torch.bfloat16 and DEVICE.type == "cpu":  # the interpreter truncates float32 to bfloat16
        exact = hidden.float() + delta.float()
        expected_total = (exact.view(torch.int32) & ~0xFFFF).view(torch.float32).to(dtype)
    assert torch.equal(total, expected_total)  # one rounding of the float32 sum, as the addition's kernel
    expected = F.layer_norm(expected_total.float(), (shape[-1],), weight.float(), bias.float(), 1e-6)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(normed.float(), expected, rtol=tol, atol=tol)


def test_eps_is_applied():
    """A constant row has zero variance: its norm is bias alone, whatever eps; a row of two values
    with variance v gets (x - mean) / sqrt(v + eps), checked by hand with a large eps."""
    hidden = torch.tensor([[1.0, 3.0, 1.0, 3.0], [2.0, 2.0, 2.0, 2.0]], device=DEVICE)
    zero = torch.zeros_like(hidden)
    weight, bias = torch.ones(4, device=DEVICE), torch.full((4,), 0.25, device=DEVICE)
    _, normed = add_layer_norm(hidden, zero, weight, bias, 3.0)
    row = torch.tensor([-0.5, 0.5, -0.5, 0.5]) + 0.25  # (x - 2) / sqrt(1 + 3), plus the bias
    torch.testing.assert_close(normed[0].cpu(), row)
    torch.testing.assert_close(normed[1].cpu(), torch.full((4,), 0.25))


def test_mismatched_inputs_are_refused():
    hidden = torch.zeros(2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="must match"):
        add_layer_norm(hidden, torch.zeros(2, 7, device=DEVICE), torch.ones(8, device=DEVICE), torch.zeros(8, device=DEVICE), 1e-6)
    with pytest.raises(ValueError, match=r"weight and bias must be \(8,\)"):
        add_layer_norm(hidden, hidden, torch.ones(7, device=DEVICE), torch.zeros(8, device=DEVICE), 1e-6)

"""A residual addition and the layer norm after it, in one pass (SigLIP's encoder layers).

A pre-norm layer adds a branch's output to the residual stream and normalises the sum for the next
branch: in PyTorch, an addition (two reads, one write) then ``layer_norm`` (a read, a write). Here
one program per row reads both, writes the sum (rounded to the input dtype, as the addition's
kernel rounds it) and the norm of that rounded sum (statistics in float32, like PyTorch's kernel;
only the order of the summations differs).
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl


@triton.jit
def _add_layer_norm_kernel(
    hidden_ptr, delta_ptr, weight_ptr, bias_ptr, sum_ptr, normed_ptr, dim, eps,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    channels = tl.arange(0, BLOCK_D)
    inside = channels < dim
    offsets = row * dim + channels
    hidden = tl.load(hidden_ptr + offsets, mask=inside, other=0.0)
    delta = tl.load(delta_ptr + offsets, mask=inside, other=0.0)
    total = (hidden.to(tl.float32) + delta.to(tl.float32)).to(hidden.dtype, fp_downcast_rounding="rtne")
    tl.store(sum_ptr + offsets, total, mask=inside)
    values = total.to(tl.float32)
    mean = tl.sum(values, axis=0) / dim
    centred = tl.where(inside, values - mean, 0.0)
    variance = tl.sum(centred * centred, axis=0) / dim
    scale = 1.0 / tl.sqrt_rn(variance + eps)
    weight = tl.load(weight_ptr + channels, mask=inside, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + channels, mask=inside, other=0.0).to(tl.float32)
    normed = (centred * scale * weight + bias).to(hidden.dtype, fp_downcast_rounding="rtne")
    tl.store(normed_ptr + offsets, normed, mask=inside)


def add_layer_norm(
    hidden: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(hidden + delta, layer_norm(hidden + delta))`` for (..., D) tensors of one dtype and
    weight, bias (D,): both outputs (..., D) in that dtype."""
    if hidden.shape != delta.shape or hidden.dtype != delta.dtype:
        raise ValueError(f"hidden {tuple(hidden.shape)} {hidden.dtype} and delta {tuple(delta.shape)} {delta.dtype} must match.")
    dim = int(hidden.shape[-1])
    if tuple(weight.shape) != (dim,) or tuple(bias.shape) != (dim,):
        raise ValueError(f"weight and bias must be ({dim},), got {tuple(weight.shape)} and {tuple(bias.shape)}.")
    hidden, delta = hidden.contiguous(), delta.contiguous()
    total, normed = torch.empty_like(hidden), torch.empty_like(hidden)
    rows = hidden.numel() // dim if dim else 0
    if rows:
        block = triton.next_power_of_2(dim)
        _add_layer_norm_kernel[(rows,)](
            hidden, delta, weight.contiguous(), bias.contiguous(), total, normed, dim, float(eps),
            BLOCK_D=block, num_warps=4 if block <= 2048 else 8,
        )
    return total, normed

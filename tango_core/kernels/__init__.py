"""Fused Triton kernels of the CUDA path (optional).

The pipeline's stages are written in plain PyTorch and run anywhere. On CUDA, when Triton is
installed (it ships with PyTorch's CUDA wheels on Linux), the memory-bound parts run as fused
kernels instead: each reads its inputs once where the PyTorch form makes several passes over
(N * L, D) or (P, M, M) tensors. The kernels compute the same quantities as their PyTorch forms
to float32 rounding; ``tests/test_kernels_*.py`` compare them (on the CPU through Triton's
interpreter, on CUDA natively).
"""

from __future__ import annotations

import importlib.util

HAVE_TRITON = importlib.util.find_spec("triton") is not None

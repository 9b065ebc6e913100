"""Fused Triton kernels of the CUDA path (optional).

The pipeline's device operations have PyTorch forms that run anywhere. On CUDA, when Triton is
installed (it ships with PyTorch's CUDA wheels on Linux), the memory-bound ones run as these
fused kernels instead (:func:`tango_core.ops.select_ops` chooses): each reads its inputs once
where the PyTorch form makes several passes over (N * L, D) or (P, M, M) tensors. They compute
the same quantities as their PyTorch forms to float32 rounding; ``tests/test_kernels_*.py``
compare them (on the CPU through Triton's interpreter, on CUDA natively). From the package they
import only :mod:`tango_core.types` and :mod:`tango_core.rope_tables`.

Compilation: Triton compiles a kernel once per combination of its compile-time constants and of
the properties it specialises arguments on (divisibility by 16, equality to 1, pointer
alignment). Kernels whose sizes change from one layout to the next are not specialised on those
sizes (``do_not_specialize``), and layout tables are 16-byte aligned, so new videos only compile
when a block size (a power of two) is new: a handful of compiles per process, each cached on disk.
"""

from __future__ import annotations

import importlib.util

HAVE_TRITON = importlib.util.find_spec("triton") is not None

MAX_STATISTICS_DIM = 8192
"""Widest features the fused statistics kernel supports (a whole row stays in registers); the
statistics stage uses PyTorch operations beyond it."""

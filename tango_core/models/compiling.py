"""Telling ``torch.compile``'s own failures apart from a model's errors."""

from __future__ import annotations


def is_compile_error(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) came from torch.compile's machinery:
    dynamo, inductor or Triton (no working compiler, an unsupported GPU, a failed kernel build)."""
    seen = 0
    while error is not None and seen < 16:
        module = type(error).__module__ or ""
        if module.startswith(("torch._dynamo", "torch._inductor", "triton")):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False

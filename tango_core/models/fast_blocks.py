"""Faster forwards for a vision tower's transformer blocks, switched on for one call at a time.

Two changes, neither of which alters what a block computes (only the rounding of its products):

* **Gated MLPs at an aligned width.** Qwen2.5-VL's ViT MLP is 3420 wide, not a multiple of 8:
  cuBLAS then falls back to slow unaligned bf16 kernels (about 200 against 640 TFLOP/s on an
  H200, ``benchmarks/probe_ttft.py``). :class:`PaddedGatedMLP` runs ``down(act(gate(x)) * up(x))``
  with ``gate`` and ``up`` padded by zero rows and ``down`` by zero columns: the padded channels are
  ``act(0) * 0 = 0`` and meet zero weights, so the output is the same sum. No memory is added: the
  module's own parameters become views into the padded storage (its state dict keeps its shapes and
  values), re-padded if they are ever replaced (``model.to(...)``, a new ``Parameter``).
* **Compiled blocks.** ``torch.compile`` of chosen blocks (``nn.Module.compile``'s mechanism,
  reversible), which fuses the float32 norms, rotary products and casts between the matrix products.

:class:`FastBlocks` holds both and installs them only inside ``with fast.active():``, so the same
model still runs transformers' own forwards outside it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .compiling import is_compile_error

LOG = logging.getLogger("tango_core")
ATTRIBUTE = "_tango_padded_mlp"  # where a module keeps its PaddedGatedMLP


def is_gated_mlp(module: nn.Module) -> bool:
    """Whether ``module`` is a ``down(act(gate(x)) * up(x))`` MLP of ``nn.Linear`` layers."""
    parts = ("gate_proj", "up_proj", "down_proj")
    return all(isinstance(getattr(module, name, None), nn.Linear) for name in parts) and hasattr(module, "act_fn")


class PaddedGatedMLP:
    """A gated MLP's forward with its intermediate width padded to a multiple of ``multiple``.

    mlp: the module (``gate_proj``, ``up_proj``: H -> I; ``down_proj``: I -> H; ``act_fn``).
    """

    def __init__(self, mlp: nn.Module, multiple: int = 64) -> None:
        if not is_gated_mlp(mlp):
            raise TypeError(f"{type(mlp).__name__} is not a gated MLP (gate_proj, up_proj, down_proj, act_fn).")
        self.mlp = mlp
        self.width = int(mlp.gate_proj.out_features)
        self.padded_width = -(-self.width // int(multiple)) * int(multiple)
        self._pointers: tuple = ()
        self.refresh()

    @classmethod
    def of(cls, mlp: nn.Module, multiple: int = 64) -> "PaddedGatedMLP":
        """The one padded forward of ``mlp`` (kept on the module, so that every adapter of a model
        shares its padded storage instead of re-padding it in turn)."""
        padded = getattr(mlp, ATTRIBUTE, None)
        if not isinstance(padded, cls) or padded.padded_width != -(-padded.width // int(multiple)) * int(multiple):
            padded = cls(mlp, multiple)
            setattr(mlp, ATTRIBUTE, padded)
        return padded

    @property
    def needed(self) -> bool:
        """Whether the width is not already a multiple."""
        return self.padded_width != self.width

    def _parameters(self) -> tuple:
        mlp = self.mlp
        return (mlp.gate_proj.weight, mlp.gate_proj.bias, mlp.up_proj.weight, mlp.up_proj.bias, mlp.down_proj.weight)

    def refresh(self) -> None:
        """(Re)build the padded storage if the module's parameters are not views into it."""
        if not self.needed or self._pointers == tuple(p.data_ptr() if p is not None else 0 for p in self._parameters()):
            return
        mlp, width, padded = self.mlp, self.width, self.padded_width
        with torch.no_grad():
            self.gate_weight, self.gate_bias = self._pad_rows(mlp.gate_proj, padded)
            self.up_weight, self.up_bias = self._pad_rows(mlp.up_proj, padded)
            down = mlp.down_proj.weight
            self.down_weight = down.new_zeros((down.shape[0], padded))
            self.down_weight[:, :width] = down
            down.data = self.down_weight[:, :width]
        self._pointers = tuple(p.data_ptr() if p is not None else 0 for p in self._parameters())

    @staticmethod
    def _pad_rows(linear: nn.Linear, padded: int):
        rows = linear.out_features
        weight = linear.weight.new_zeros((padded, linear.in_features))
        weight[:rows] = linear.weight
        linear.weight.data = weight[:rows]
        bias = None
        if linear.bias is not None:
            bias = linear.bias.new_zeros((padded,))
            bias[:rows] = linear.bias
            linear.bias.data = bias[:rows]
        return weight, bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., H), the module's output."""
        if not self.needed:
            return type(self.mlp).forward(self.mlp, hidden)
        gate = F.linear(hidden, self.gate_weight, self.gate_bias)
        up = F.linear(hidden, self.up_weight, self.up_bias)
        return F.linear(self.mlp.act_fn(gate) * up, self.down_weight, self.mlp.down_proj.bias)


class FastBlocks:
    """Padded gated MLPs and compiled forwards for a stack of blocks, active inside :meth:`active`.

    blocks: the blocks; every gated MLP inside them is padded when ``pad_multiple`` is set.
    compiled: indices of the blocks to ``torch.compile`` (blocks with hooks to keep: leave them out).
    """

    def __init__(self, blocks: Sequence[nn.Module], pad_multiple: Optional[int] = 64, compiled: Sequence[int] = ()) -> None:
        self.blocks = list(blocks)
        self.padded: List[PaddedGatedMLP] = []
        if pad_multiple:
            mlps = [m for block in self.blocks for m in block.modules() if is_gated_mlp(m)]
            self.padded = [p for p in (PaddedGatedMLP.of(m, pad_multiple) for m in mlps) if p.needed]
        self.compiled = {int(i): torch.compile(self.blocks[int(i)]._call_impl) for i in compiled}
        self.compile_failed = False

    @contextmanager
    def active(self, compile_blocks: bool = True) -> Iterator["FastBlocks"]:
        """The fast forwards installed for the duration of the ``with`` block (then the modules' own)."""
        for padded in self.padded:
            padded.refresh()
            padded.mlp.forward = padded.forward
        use_compiled = compile_blocks and not self.compile_failed
        if use_compiled:
            for index, compiled_call in self.compiled.items():
                self.blocks[index]._compiled_call_impl = compiled_call  # what nn.Module.compile() sets
        try:
            yield self
        finally:
            for padded in self.padded:
                del padded.mlp.forward
            if use_compiled:
                for index in self.compiled:
                    self.blocks[index]._compiled_call_impl = None

    def run(self, forward, *args, **kwargs):
        """``forward(*args, **kwargs)`` with the fast forwards; if compiling fails (no working
        Triton or C compiler, say), logs it once and runs again without the compiled blocks."""
        if not self.compiled or self.compile_failed:
            with self.active(compile_blocks=False):
                return forward(*args, **kwargs)
        try:
            with self.active():
                return forward(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - inductor's failures have no one base class
            if not is_compile_error(error):
                raise
            self.compile_failed = True
            LOG.warning("compiling the vision blocks failed (%s: %s); running them uncompiled", type(error).__name__, error)
            with self.active(compile_blocks=False):
                return forward(*args, **kwargs)


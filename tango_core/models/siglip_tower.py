"""LLaVA's SigLIP tower up to its feature layer, with two speed-ups that keep what it computes.

The tower over a video (32 or 64 frames of 729 patches) is compute-bound: on an H200 its products
are 62% of its kernel time, cuDNN's attention 18%, and the rest is layer norms, the tanh-GELU and
the residual additions (``benchmarks/probe_vision.py``). Three of those costs go:

* **GELU in the product's epilogue** (``mode="fused"``): ``fc1`` and its tanh-GELU are one
  cuBLASLt call (``torch._addmm_activation``, which PyTorch's own fused ops use), so the
  (tokens, 4304) activation is written once instead of written, read and written again. The
  epilogue applies the GELU to the float32 accumulator before rounding (eager rounds first), so
  the outputs differ by a rounding. (The op's CPU kernel applies the exact GELU, not the tanh
  form, so on the CPU the product and the tanh-GELU run apart: identical to transformers'.)
* **Residual additions and the layer norms after them in one pass** (``mode="fused"``, on CUDA
  with Triton): each of a layer's two residual additions and the layer norm of its sum (the MLP's,
  or the next layer's attention's) read their inputs once (:mod:`tango_core.kernels.layer_norm`).
* **One CUDA graph per input shape** (``mode="graphs"``, fused as well): the embeddings and every
  layer replayed at once, with no launch gaps; captured on the second call of a shape (a shape met
  once runs eagerly), at most ``max_graphs`` shapes kept.

``mode="transformers"`` runs each ``SiglipEncoderLayer`` as transformers defines it (the exact path).
Layers that are not SigLIP's (another tower) or whose MLP is not a tanh-GELU one run their own
forward in every mode.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import HAVE_TRITON
from .static_decoding import capture

LOG = logging.getLogger("tango_core")
TOWER_MODES = ("graphs", "fused", "transformers")
ATTRIBUTE = "_tango_siglip_towers"  # where a tower module keeps its runners


def has_tanh_gelu_mlp(layer: nn.Module) -> bool:
    """Whether ``layer`` is a SigLIP encoder layer whose MLP is ``fc2(gelu_tanh(fc1(x)))``."""
    mlp = getattr(layer, "mlp", None)
    parts_ok = all(hasattr(layer, name) for name in ("layer_norm1", "self_attn", "layer_norm2"))
    linears = isinstance(getattr(mlp, "fc1", None), nn.Linear) and isinstance(getattr(mlp, "fc2", None), nn.Linear)
    act = getattr(mlp, "activation_fn", None)
    tanh_gelu = type(act).__name__ in ("GELUTanh", "PytorchGELUTanh") or (
        isinstance(act, nn.GELU) and act.approximate == "tanh"
    )
    return parts_ok and linears and mlp.fc1.bias is not None and tanh_gelu


def gelu_epilogue_mlp(mlp: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``fc2(gelu_tanh(fc1(hidden)))`` with fc1's bias and GELU in its product's epilogue: (..., D) -> (..., D)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    if flat.is_cuda:  # cuBLASLt's GELU epilogue (and PyTorch's CUDA fallback of the op) is the tanh form
        inner = torch._addmm_activation(mlp.fc1.bias, flat, mlp.fc1.weight.t(), use_gelu=True)
    else:  # the op's CPU kernel applies the exact GELU instead: spelt out here
        inner = F.gelu(torch.addmm(mlp.fc1.bias, flat, mlp.fc1.weight.t()), approximate="tanh")
    return mlp.fc2(inner).view(hidden.shape)


def _fused_norm_kernel_runs(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda and HAVE_TRITON


def add_then_norm(hidden: torch.Tensor, delta: torch.Tensor, norm: nn.LayerNorm) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(hidden + delta, norm(hidden + delta))`` on (..., D): one fused kernel on CUDA (Triton's;
    the same sum, the norm's statistics summed in another order), the two ops elsewhere."""
    if _fused_norm_kernel_runs(hidden) and norm.weight is not None and norm.bias is not None:
        from ..kernels.layer_norm import add_layer_norm

        return add_layer_norm(hidden, delta, norm.weight, norm.bias, norm.eps)
    total = hidden + delta
    return total, norm(total)


def fused_layer(layer: nn.Module, hidden: torch.Tensor, normed: Optional[torch.Tensor] = None,
                next_norm: Optional[nn.LayerNorm] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One SigLIP encoder layer (pre-norm attention, then pre-norm MLP, both residual) on (N, P, D).

    normed: ``layer.layer_norm1(hidden)`` when the previous layer made it. next_norm: the next
    layer's ``layer_norm1``, applied to this layer's output in the same pass as its last residual
    addition. Returns (the output, ``next_norm`` of it or None).
    """
    normed = layer.layer_norm1(hidden) if normed is None else normed
    attended, _ = layer.self_attn(hidden_states=normed, attention_mask=None)
    hidden, normed = add_then_norm(hidden, attended, layer.layer_norm2)
    mlp_out = gelu_epilogue_mlp(layer.mlp, normed)
    if next_norm is None:
        return hidden + mlp_out, None
    return add_then_norm(hidden, mlp_out, next_norm)


@dataclass
class _Graph:
    pixels: torch.Tensor  # the captured input buffer
    seen: int = 0
    graph: Optional["torch.cuda.CUDAGraph"] = None
    output: Optional[torch.Tensor] = None
    failed: bool = False


class SiglipTower:
    """``tower.embeddings`` then ``tower.encoder.layers[:stop]`` on pixels (N, 3, S, S) -> (N, P, D).

    tower: a transformers ``SiglipVisionTransformer`` (``vision_tower`` of a LLaVA-OneVision model);
    its modules are used as they are, never changed. mode: one of :data:`TOWER_MODES`; ``"graphs"``
    replays on CUDA only (elsewhere it is ``"fused"``).
    """

    def __init__(self, tower: nn.Module, stop: int, mode: str = "graphs", max_graphs: int = 2, capture_after: int = 2) -> None:
        if mode not in TOWER_MODES:
            raise ValueError(f"Unknown SigLIP tower mode {mode!r}; choose one of {TOWER_MODES}.")
        layers = tower.encoder.layers
        if not 0 <= int(stop) <= len(layers):
            raise ValueError(f"stop must be in [0, {len(layers)}] for a tower of {len(layers)} layers, got {stop}.")
        self.tower = tower
        self.layers = list(layers[: int(stop)])
        self.mode = mode
        self.fusable = [mode != "transformers" and has_tanh_gelu_mlp(layer) for layer in self.layers]
        self.max_graphs = int(max_graphs)
        self.capture_after = int(capture_after)
        self.graphs: "OrderedDict[Tuple, _Graph]" = OrderedDict()

    @classmethod
    def of(cls, tower: nn.Module, stop: int, mode: str = "graphs") -> "SiglipTower":
        """The one runner of ``tower`` for (stop, mode), kept on the tower module: the adapters of
        one model (one per setting in a sweep) share its graphs instead of capturing their own."""
        runners = tower.__dict__.setdefault(ATTRIBUTE, {})
        key = (int(stop), mode)
        if key not in runners:
            runners[key] = cls(tower, stop, mode=mode)
        return runners[key]

    def eager(self, pixels: torch.Tensor) -> torch.Tensor:
        """The tower without a graph (fused layers where :attr:`fusable`; a fused layer followed by
        another normalises its output for it)."""
        hidden = self.tower.embeddings(pixels)
        normed = None
        for index, (layer, fuse) in enumerate(zip(self.layers, self.fusable)):
            if not fuse:
                hidden, normed = layer(hidden, None), None
                continue
            fuse_next = index + 1 < len(self.layers) and self.fusable[index + 1]
            next_norm = self.layers[index + 1].layer_norm1 if fuse_next else None
            hidden, normed = fused_layer(layer, hidden, normed, next_norm)
        return hidden

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.mode != "graphs" or pixels.device.type != "cuda" or torch.is_grad_enabled():
            return self.eager(pixels)
        key = (tuple(pixels.shape), pixels.dtype, pixels.device)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = _Graph(pixels=torch.empty_like(pixels))
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        if entry.graph is not None:
            entry.pixels.copy_(pixels)
            entry.graph.replay()
            return entry.output.clone()  # the graph writes the same buffer on its next replay
        entry.seen += 1
        if entry.failed or entry.seen < self.capture_after:
            return self.eager(pixels)
        entry.pixels.copy_(pixels)
        out = self.eager(entry.pixels)  # the real output, and the warm-up of what is captured
        graph = torch.cuda.CUDAGraph()
        try:
            entry.output = capture(graph, lambda: self.eager(entry.pixels), pixels.device)
            entry.graph = graph
        except Exception as error:  # noqa: BLE001 - a tower that cannot be captured still runs
            entry.failed, entry.output = True, None
            LOG.warning("the SigLIP tower could not be captured as a CUDA graph (%s); running it eagerly", error)
        return out

    def clear(self) -> None:
        """Drop the captured graphs (frees their memory pools)."""
        self.graphs.clear()

"""Decoding on a static KV cache, each step replayed as a CUDA graph.

A transformers language model decoding one token at a time is launch-bound: a 7B model's step is
hundreds of small kernels, about 17 ms from Python against a few ms of GPU work. Here the cache is a
transformers ``StaticCache`` of a bucketed length (the prompt, then the answer budget), and one
decoding step (embed -> language model -> head) is captured once per cache as a CUDA graph that
reads the token and its position from fixed buffers; each later step copies them in and replays.
Caches and graphs are kept per length bucket and reused by later calls: a reused cache is rewound
(its write position set back to 0), and entries past the current position are never attended to
(the causal mask), so it needs no clearing.

Without CUDA (or with ``capture=False``) the same steps run eagerly on the static cache.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

import torch

LOG = logging.getLogger("tango_core")

# A step's body: (token (1, 1) int64, slot (1,) int64, position (P, 1, 1) or (1, 1) int64, cache) -> logits (1, V).
StepBody = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object], torch.Tensor]


def bucket_length(needed: int, quantum: int = 1024) -> int:
    """The cache length for ``needed`` tokens: the next multiple of ``quantum``."""
    return -(-int(needed) // quantum) * quantum


@dataclass
class _Entry:
    cache: object
    token: torch.Tensor
    slot: torch.Tensor
    position: torch.Tensor
    graph: Optional[torch.cuda.CUDAGraph] = None
    logits: Optional[torch.Tensor] = None
    failed: bool = False


class StaticDecoding:
    """Static caches and graphed decoding steps for one language model.

    config: the language model's config (for ``StaticCache``). position_shape: shape of one step's
    position ids ((1, 1), or (3, 1, 1) for M-RoPE). capture: replay steps as CUDA graphs on CUDA.
    max_entries: cache buckets kept (least recently used dropped first).
    """

    def __init__(self, config, device: torch.device, position_shape=(1, 1), capture: bool = True, max_entries: int = 2) -> None:
        self.config = config
        self.device = torch.device(device)
        self.position_shape = tuple(position_shape)
        self.capture = bool(capture) and self.device.type == "cuda"
        self.max_entries = int(max_entries)
        self.entries: "OrderedDict[int, _Entry]" = OrderedDict()

    def cache(self, needed: int):
        """A static cache holding at least ``needed`` tokens (reused across calls)."""
        from transformers import StaticCache

        length = bucket_length(needed)
        entry = self.entries.get(length)
        if entry is None:
            entry = _Entry(
                cache=StaticCache(config=self.config, max_cache_len=length),
                token=torch.zeros((1, 1), dtype=torch.long, device=self.device),
                slot=torch.zeros((1,), dtype=torch.long, device=self.device),
                position=torch.zeros(self.position_shape, dtype=torch.long, device=self.device),
            )
            self.entries[length] = entry
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)
        self.entries.move_to_end(length)
        self._rewind(entry.cache)
        return entry.cache

    @staticmethod
    def _rewind(cache) -> None:
        """Start writing at slot 0 again. transformers' static layers keep their write position in a
        device counter (``cumulative_length``) that every update advances; zeroed in place so that a
        captured graph keeps reading the same tensor."""
        for layer in cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.cumulative_length.zero_()

    def _entry_of(self, cache) -> _Entry:
        for entry in self.entries.values():
            if entry.cache is cache:
                return entry
        raise KeyError("this cache was not made by this StaticDecoding")

    def step(self, body: StepBody, cache, token: torch.Tensor, slot: int, position: torch.Tensor) -> torch.Tensor:
        """One decoding step at cache ``slot`` with ``position`` ids: logits (1, V).

        The first step on a cache runs eagerly (that also warms the kernels up) and captures the
        graph; later steps replay it. A failed capture leaves that cache eager, with a log line.
        """
        entry = self._entry_of(cache)
        entry.token.copy_(token.reshape(1, 1))
        entry.slot.fill_(int(slot))
        entry.position.copy_(position.reshape(self.position_shape))
        if entry.graph is not None:
            entry.graph.replay()
            return entry.logits
        if not self.capture or entry.failed:
            return body(entry.token, entry.slot, entry.position, entry.cache)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            logits = body(entry.token, entry.slot, entry.position, entry.cache)  # the real step, and the warm-up
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                entry.logits = body(entry.token, entry.slot, entry.position, entry.cache)
            entry.graph = graph
        except Exception as error:  # noqa: BLE001 - a model whose step cannot be captured still decodes
            entry.failed = True
            entry.logits = None
            LOG.warning("decoding step could not be captured as a CUDA graph (%s); decoding eagerly", error)
        return logits

    def clear(self) -> None:
        """Drop every cache and graph (frees their GPU memory)."""
        self.entries.clear()

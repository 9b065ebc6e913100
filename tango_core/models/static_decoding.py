"""Prefill and decoding on a static KV cache, replayed as CUDA graphs.

A transformers language model decoding one token at a time is launch-bound: a 7B model's step is
hundreds of small kernels, about 17 ms from Python against a few ms of GPU work; the prefill of a
pruned prompt (a few hundred tokens) is launch-bound too. Here the cache is a transformers
``StaticCache`` of a bucketed length (the prompt, then the answer budget), and

* one decoding step (embed -> language model -> head) is captured once per cache as a CUDA graph
  that reads the token and its position from fixed buffers; each later step copies them in and
  replays. With ``compile_steps`` the step is ``torch.compile``-d first (its small elementwise
  kernels fused), then captured;
* the prompt is padded at its end to a multiple of ``prompt_quantum`` tokens and its prefill is
  captured once per padded length. Under the causal mask no real token attends to the padding, so
  the real tokens' outputs are those of the unpadded prompt (up to the rounding of products of
  another size); the cache's write position is then set back to the real length, so the first
  decoding step overwrites the first padding entry, and no later step attends to one it has not
  overwritten. With ``compile_prefills`` the prefill body is ``torch.compile``-d before its capture
  (a padded prompt of a few hundred tokens spends a third of its kernel time in the norms, rotary
  products and casts between the products, which inductor fuses); dynamo compiles it for the
  first padded length, once more with the length symbolic for the next, then never again.

Caches and graphs are kept per length bucket and reused by later calls: a reused cache is rewound
(its write position set back to 0), and entries past the current position are never attended to
(the causal mask), so it needs no clearing.

Without CUDA (or with ``capture=False``) the same steps run eagerly on the static cache, the
prompt unpadded unless ``pad_prompts`` is set.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from .compiling import is_compile_error

LOG = logging.getLogger("tango_core")

# A step's body: (model, token (1, 1) int64, slot (1,) int64, position (P, 1, 1) or (1, 1) int64, cache)
# -> logits (1, V). A module-level function, so that its compiled form serves every adapter of a model.
StepBody = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, object], torch.Tensor]
# A prefill's body: (model, embeds (1, S, D), positions (..., S) int64, slots (S,) int64, last (1,) int64,
# cache) -> logits (1, V) of the token at ``last``.
PrefillBody = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, object], torch.Tensor]


def capture(graph: "torch.cuda.CUDAGraph", fn: Callable[[], torch.Tensor], device: torch.device, pool=None) -> torch.Tensor:
    """``fn()`` captured into ``graph`` on a side stream: its output (filled on each replay).

    ``torch.cuda.graph`` would first synchronise the device and empty PyTorch's memory caches (GPU
    and pinned host): between the answers of an evaluation, where a new prompt length means a new
    capture, that hands all cached memory back and makes every later stage allocate it again.
    Here the side stream only waits for the work queued before the capture."""
    current = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        graph.capture_begin(pool) if pool is not None else graph.capture_begin()
        try:
            out = fn()
        except BaseException:
            try:
                graph.capture_end()
            except Exception:  # noqa: BLE001 - the capture is invalid anyway; the first error is the one to see
                pass
            raise
        graph.capture_end()
    current.wait_stream(stream)
    return out


_COMPILED: Dict[Callable, Callable] = {}  # plain function -> its torch.compile wrapper


def compiled(body: StepBody) -> StepBody:
    """``torch.compile`` of a step body, made once per function (dynamo keeps its graphs per code
    object, guarded on the model and the cache's shapes). A bound method is compiled as its
    function, with the object passed in: nothing here keeps the object (or its model) alive."""
    function, owner = getattr(body, "__func__", body), getattr(body, "__self__", None)
    fast = _COMPILED.get(function)
    if fast is None:
        fast = _COMPILED[function] = torch.compile(function)
    return fast if owner is None else functools.partial(fast, owner)


def clear_compiled() -> None:
    """Forget the compiled step bodies (the next compiled step compiles again)."""
    _COMPILED.clear()


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
    body: Optional[StepBody] = None  # the body the graph was captured from


@dataclass
class _PromptEntry:
    """A padded prompt's fixed buffers and its captured prefill (one per cache and padded length)."""

    embeds: torch.Tensor  # (1, S_pad, D)
    positions: torch.Tensor  # (..., S_pad)
    slots: torch.Tensor  # (S_pad,) 0 .. S_pad - 1
    last: torch.Tensor  # (1,) index of the last real token
    length: torch.Tensor  # () real length: the cache's write position after the prefill
    graph: Optional[torch.cuda.CUDAGraph] = None
    logits: Optional[torch.Tensor] = None
    failed: bool = False
    seen: int = 0  # prefills run at this padded length


class StaticDecoding:
    """Static caches, graphed prefills and graphed decoding steps for one language model.

    model: what the bodies get as their first argument. config: the language model's config (for
    ``StaticCache``). position_shape: shape of one step's position ids ((1, 1), or (3, 1, 1) for
    M-RoPE). capture: replay prefills and steps as CUDA graphs on CUDA. compile_steps:
    ``torch.compile`` the decoding step before capturing it. compile_prefills: the same for the
    prefill bodies (default: as ``compile_steps``). pad_prompts: pad prompts to a multiple
    of ``prompt_quantum`` (default: when capturing); prompts longer than ``max_padded_prompt`` run
    unpadded and eagerly (their prefill is compute-bound anyway). max_entries: cache buckets kept;
    max_prompt_graphs: prefill graphs kept (least recently used dropped first; the default holds
    every padded length up to ``max_padded_prompt`` for one cache: an evaluation's prompts, whose
    lengths vary, never evict each other; the graphs share one memory pool). prompt_capture_after:
    the prefill of a padded length is captured the n-th time that length is met (a capture costs
    about six eager prefills at 7B: lengths met once run eagerly). A prefill graph's output lives in
    the shared pool until the next prefill: read it (the decoder takes its argmax) before then.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config,
        device: torch.device,
        position_shape=(1, 1),
        capture: bool = True,
        compile_steps: bool = False,
        compile_prefills: Optional[bool] = None,
        pad_prompts: Optional[bool] = None,
        prompt_quantum: int = 64,
        max_padded_prompt: int = 2048,
        max_entries: int = 2,
        max_prompt_graphs: int = 32,
        prompt_capture_after: int = 2,
    ) -> None:
        self.model = model
        self.config = config
        self.device = torch.device(device)
        self.position_shape = tuple(position_shape)
        self.capture = bool(capture) and self.device.type == "cuda"
        self.compile_steps = bool(compile_steps)
        self.compile_prefills = self.compile_steps if compile_prefills is None else bool(compile_prefills)
        self.pad_prompts = self.capture if pad_prompts is None else bool(pad_prompts)
        self.prompt_quantum = int(prompt_quantum)
        self.max_padded_prompt = int(max_padded_prompt)
        self.max_entries = int(max_entries)
        self.max_prompt_graphs = int(max_prompt_graphs)
        self.prompt_capture_after = int(prompt_capture_after)
        self.entries: "OrderedDict[int, _Entry]" = OrderedDict()
        self.prompts: "OrderedDict[Tuple[int, int], _PromptEntry]" = OrderedDict()
        self._pool = None  # one memory pool shared by the prefill graphs (they never run concurrently)

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
                _, dropped = self.entries.popitem(last=False)
                for key in [key for key, prompt in self.prompts.items() if key[0] == id(dropped.cache)]:
                    del self.prompts[key]
        self.entries.move_to_end(length)
        self._rewind(entry.cache)
        return entry.cache

    @staticmethod
    def _rewind(cache) -> None:
        """Start writing at slot 0 again. transformers' static layers keep their write position in a
        device counter (``cumulative_length``) that every update advances; zeroed in place so that a
        captured graph keeps reading the same tensor."""
        StaticDecoding._rewind_layers(cache.layers)

    @staticmethod
    def _rewind_layers(layers) -> None:
        for layer in layers:
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
        if entry.body is not None and entry.body != body:  # another step on this cache: capture again
            entry.graph, entry.logits, entry.failed = None, None, False
        entry.body = body
        if entry.graph is not None:
            entry.graph.replay()
            return entry.logits
        if self.compile_steps:
            body = self._compiled_or_eager(body, entry)
        if not self.capture or entry.failed:
            return body(self.model, entry.token, entry.slot, entry.position, entry.cache)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            logits = body(self.model, entry.token, entry.slot, entry.position, entry.cache)  # the real step, and the warm-up
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            entry.logits = capture(graph, lambda: body(self.model, entry.token, entry.slot, entry.position, entry.cache), self.device)
            entry.graph = graph
        except Exception as error:  # noqa: BLE001 - a model whose step cannot be captured still decodes
            entry.failed = True
            entry.logits = None
            LOG.warning("decoding step could not be captured as a CUDA graph (%s); decoding eagerly", error)
        return logits

    def _compiled_or_eager(self, body: StepBody, entry: _Entry) -> StepBody:
        """The compiled body, compiled now by a trial run on ``entry``'s buffers (the cache's write
        positions put back after it); the eager body, with one log line and no more compiling, if
        compiling fails."""
        fast = compiled(body)
        layers = [layer for layer in entry.cache.layers if getattr(layer, "is_initialized", False)]
        saved = [layer.cumulative_length.clone() for layer in layers]
        try:
            fast(self.model, entry.token, entry.slot, entry.position, entry.cache)
        except Exception as error:  # noqa: BLE001 - inductor's failures have no one base class
            if not is_compile_error(error):
                raise
            self.compile_steps = False
            LOG.warning("compiling the decoding step failed (%s: %s); decoding uncompiled", type(error).__name__, error)
            return body
        finally:
            for layer, length in zip(layers, saved):
                layer.cumulative_length.copy_(length)
        return fast

    def prefill(self, body: PrefillBody, cache, embeds: torch.Tensor, positions: torch.Tensor, layers: Optional[range] = None):
        """Run the prompt embeds (1, S, D) at positions (..., S) into ``cache`` (just made by
        :meth:`cache`): what ``body`` returns (logits (1, V) of its last token). Padded and
        replayed as a CUDA graph where the constructor's settings say so; the cache then continues
        at slot S either way. layers: the cache layers ``body`` writes (default all): only these
        are rewound and set to S, so that two bodies can fill one cache's two groups of layers
        with prompts of two lengths (each body has graphs of its own)."""
        length = int(embeds.shape[1])
        if not self.pad_prompts or length > self.max_padded_prompt:
            slots = torch.arange(length, device=embeds.device)
            last = torch.full((1,), length - 1, dtype=torch.long, device=embeds.device)
            return body(self.model, embeds, positions, slots, last, cache)
        padded = -(-length // self.prompt_quantum) * self.prompt_quantum
        entry = self._prompt_entry(cache, embeds, positions, padded, body)
        entry.embeds[:, :length].copy_(embeds)
        entry.embeds[:, length:].zero_()
        entry.positions[..., :length].copy_(positions)
        entry.positions[..., length:].copy_((positions[..., -1:] + 1).expand_as(entry.positions[..., length:]))
        entry.last.fill_(length - 1)
        entry.length.fill_(length)
        if entry.graph is not None:
            entry.graph.replay()
            return entry.logits
        entry.seen += 1
        if entry.seen < self.prompt_capture_after:
            return self._padded_prefill(body, cache, entry, layers)
        if self.compile_prefills:
            body, logits = self._compiled_prefill_or_eager(body, cache, entry, layers)
            if logits is not None and (not self.capture or entry.failed):
                return logits
        if not self.capture or entry.failed:
            return self._padded_prefill(body, cache, entry, layers)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            logits = self._padded_prefill(body, cache, entry, layers)  # the real prefill, and the warm-up
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            entry.logits = capture(graph, lambda: self._padded_prefill(body, cache, entry, layers), self.device, self._pool)
            entry.graph = graph
        except Exception as error:  # noqa: BLE001 - a prefill that cannot be captured still runs
            entry.failed = True
            entry.logits = None
            LOG.warning("prefill could not be captured as a CUDA graph (%s); running it eagerly", error)
        return logits

    def _compiled_prefill_or_eager(
        self, body: PrefillBody, cache, entry: _PromptEntry, layers: Optional[range]
    ) -> Tuple[PrefillBody, Optional[torch.Tensor]]:
        """(the compiled prefill body, the output of its run on ``entry``: a whole prefill, which a
        capture that follows rewinds and writes again); (the eager body, None), with one log line
        and no more compiling of prefills, if compiling fails."""
        fast = compiled(body)
        try:
            return fast, self._padded_prefill(fast, cache, entry, layers)
        except Exception as error:  # noqa: BLE001 - inductor's failures have no one base class
            if not is_compile_error(error):
                raise
            self.compile_prefills = False
            LOG.warning("compiling the prefill failed (%s: %s); prefilling uncompiled", type(error).__name__, error)
            return body, None

    def _prompt_entry(self, cache, embeds: torch.Tensor, positions: torch.Tensor, padded: int, body: Callable) -> _PromptEntry:
        # A bound body is keyed with its object (bound methods compare by function and object):
        # two runners' halves never share a graph.
        key = (id(cache), padded, body)
        entry = self.prompts.get(key)
        if entry is None:
            device = embeds.device
            entry = _PromptEntry(
                embeds=embeds.new_zeros((1, padded, embeds.shape[2])),
                positions=positions.new_zeros(tuple(positions.shape[:-1]) + (padded,)),
                slots=torch.arange(padded, device=device),
                last=torch.zeros((1,), dtype=torch.long, device=device),
                length=torch.zeros((), dtype=torch.long, device=device),
            )
            self.prompts[key] = entry
            while len(self.prompts) > self.max_prompt_graphs:
                self.prompts.popitem(last=False)
        self.prompts.move_to_end(key)
        return entry

    def _padded_prefill(self, body: PrefillBody, cache, entry: _PromptEntry, layers: Optional[range] = None):
        """The padded prompt from slot 0 of ``layers`` (default all), then their write position set
        to the real length (on the device)."""
        chosen = list(cache.layers) if layers is None else [cache.layers[i] for i in layers]
        self._rewind_layers(chosen)
        out = body(self.model, entry.embeds, entry.positions, entry.slots, entry.last, cache)
        for layer in chosen:
            layer.cumulative_length.copy_(entry.length)
        return out

    def clear(self) -> None:
        """Drop every cache and graph (frees their GPU memory)."""
        self.prompts.clear()
        self.entries.clear()

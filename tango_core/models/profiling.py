"""Efficiency profiling of generation calls, with the metrics of spec section 9.

    with Profiler(model) as profiler:
        for video, question in requests:
            model.generate(video, question, max_new_tokens=16)
    print(profiler.table())          # also profiler.summary(), .to_json(path), .to_csv(path)

Per request (one ``generate`` call):

* ``total_ms``: wall clock of the call (video decoding and preprocessing included);
* ``gpu_ms``: CUDA-event time around the call (Python inside it included, as in the reference);
* ``peak_memory_gib``: ``max_memory_allocated`` after a reset at the start of the call (weights included);
* ``vit_ms``: the vision tower and the saliency head or probe (stage "vit");
* ``other_ms``: multimodal preparation minus the ViT: projector or merger, pooling, Tango, splicing
  (stages "project", "prune", "splice");
* ``preprocess_ms``: decoding the clip and making pixels (stages "load", "preprocess"); the reference
  does these before ``generate`` and leaves them out of its times;
* ``prefill_ms``: the language model over the prompt (stage "prefill");
* ``ttft_ms``: from the start of the call to the first token on the host (preprocessing included);
  ``ttft_reference_ms`` = vit + other + prefill, the reference's definition (from the start of
  ``generate``, after preprocessing);
* ``decode_tokens_per_s``: generated tokens (the first included) / (total - TTFT), the reference's rule.

The summary averages per-request times, sums total and GPU runtime, takes the maximum peak memory
and averages throughput. Stage times come from the adapter's :class:`~tango_core.models.base.StageTimer`
(CUDA events, no synchronisation between stages); on CPU everything is wall clock.
"""

from __future__ import annotations

import csv
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch

from .base import TangoGeneration

OTHER_STAGES = ("project", "prune", "splice")
PREPROCESS_STAGES = ("load", "preprocess")


@dataclass
class RequestProfile:
    """The metrics of one generation call (see the module docstring)."""

    total_ms: float
    gpu_ms: float
    peak_memory_gib: float
    vit_ms: float
    other_ms: float
    preprocess_ms: float
    prefill_ms: float
    ttft_ms: float
    ttft_reference_ms: float
    new_tokens: int
    decode_tokens_per_s: float
    visual_tokens_after: int

    @classmethod
    def from_generation(cls, generation: TangoGeneration, total_ms: float, gpu_ms: float, peak_bytes: int) -> "RequestProfile":
        stats = generation.stats
        times = stats.times_ms
        vit = float(times.get("vit", 0.0))
        other = float(sum(times.get(k, 0.0) for k in OTHER_STAGES))
        prefill = float(times.get("prefill", 0.0))
        ttft = float(stats.first_token_ms if stats.first_token_ms is not None else total_ms)
        decoding_s = max(total_ms - ttft, 1e-6) / 1e3
        return cls(
            total_ms=float(total_ms),
            gpu_ms=float(gpu_ms),
            peak_memory_gib=peak_bytes / 2**30,
            vit_ms=vit,
            other_ms=other,
            preprocess_ms=float(sum(times.get(k, 0.0) for k in PREPROCESS_STAGES)),
            prefill_ms=prefill,
            ttft_ms=ttft,
            ttft_reference_ms=vit + other + prefill,
            new_tokens=int(stats.new_tokens),
            decode_tokens_per_s=int(stats.new_tokens) / decoding_s,
            visual_tokens_after=int(stats.visual_tokens_after),
        )


class Profiler:
    """Record a :class:`RequestProfile` for every ``generate`` call of ``model`` inside the block.

    ``model`` is a :class:`~tango_core.models.base.TangoVideoLM`; its ``generate`` is wrapped for the
    duration of the ``with`` block only. :meth:`record` measures any other call the same way.
    """

    def __init__(self, model: Any = None) -> None:
        self.model = model
        self.requests: List[RequestProfile] = []
        self.started: Optional[float] = None
        self.ended: Optional[float] = None
        self._original = None

    def __enter__(self) -> "Profiler":
        self.started = time.perf_counter()
        if self.model is not None:
            self._original = self.model.generate

            def generate(*args: Any, **kwargs: Any) -> TangoGeneration:
                with self.record() as slot:
                    slot["generation"] = self._original(*args, **kwargs)
                return slot["generation"]

            self.model.generate = generate
        return self

    def __exit__(self, *exc: object) -> None:
        self.ended = time.perf_counter()
        if self.model is not None and self._original is not None:
            del self.model.generate  # the instance attribute; the class method shows through again
            self._original = None

    @contextmanager
    def record(self) -> Iterator[Dict[str, Any]]:
        """Measure the block, which must put its TangoGeneration in the yielded dict's "generation"."""
        cuda = torch.cuda.is_available()
        slot: Dict[str, Any] = {}
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        started = time.perf_counter()
        yield slot
        if cuda:
            end.record()
            end.synchronize()
        total_ms = (time.perf_counter() - started) * 1e3
        gpu_ms = begin.elapsed_time(end) if cuda else total_ms
        peak = torch.cuda.max_memory_allocated() if cuda else 0
        if "generation" in slot:
            self.requests.append(RequestProfile.from_generation(slot["generation"], total_ms, gpu_ms, peak))

    # -- results -------------------------------------------------------------------------------

    def summary(self, total_runtime_s: Optional[float] = None) -> Dict[str, float]:
        """Spec section 9's figures over the recorded requests.

        total_runtime_s: the wall clock of the whole request loop (default: the ``with`` block).
        """
        if total_runtime_s is None and self.started is not None:
            total_runtime_s = ((self.ended or time.perf_counter()) - self.started)
        return summarise(self.requests, total_runtime_s)

    def table(self, total_runtime_s: Optional[float] = None) -> str:
        """The summary as a printable table."""
        return format_summary(self.summary(total_runtime_s))

    def to_json(self, path: str, total_runtime_s: Optional[float] = None) -> None:
        """Summary and per-request records as JSON."""
        payload = {"summary": self.summary(total_runtime_s), "requests": [asdict(r) for r in self.requests]}
        Path(path).write_text(json.dumps(payload, indent=1))

    def to_csv(self, path: str) -> None:
        """One row per request."""
        write_csv(self.requests, path)


def summarise(requests: List[RequestProfile], total_runtime_s: Optional[float] = None) -> Dict[str, float]:
    """Averages, sums and maxima of spec section 9 over ``requests``."""
    count = len(requests)

    def mean(name: str) -> float:
        return sum(getattr(r, name) for r in requests) / count if count else float("nan")

    return {
        "requests": count,
        "total_runtime_s": float(total_runtime_s) if total_runtime_s is not None else sum(r.total_ms for r in requests) / 1e3,
        "total_gpu_runtime_s": sum(r.gpu_ms for r in requests) / 1e3,
        "peak_memory_gib": max((r.peak_memory_gib for r in requests), default=float("nan")),
        "avg_vit_ms": mean("vit_ms"),
        "avg_other_ms": mean("other_ms"),
        "avg_preprocess_ms": mean("preprocess_ms"),
        "avg_prefill_ms": mean("prefill_ms"),
        "avg_ttft_ms": mean("ttft_ms"),
        "avg_ttft_reference_ms": mean("ttft_reference_ms"),
        "avg_decode_tokens_per_s": mean("decode_tokens_per_s"),
        "avg_visual_tokens": mean("visual_tokens_after"),
    }


SUMMARY_ROWS = (
    ("requests", "requests", "{:.0f}"),
    ("total_runtime_s", "total runtime (s)", "{:.2f}"),
    ("total_gpu_runtime_s", "total GPU runtime (s)", "{:.2f}"),
    ("peak_memory_gib", "peak memory (GiB)", "{:.2f}"),
    ("avg_vit_ms", "average ViT time (ms)", "{:.2f}"),
    ("avg_other_ms", "average other time (ms): projector, pooling, Tango, splicing", "{:.2f}"),
    ("avg_preprocess_ms", "average decoding + preprocessing (ms)", "{:.2f}"),
    ("avg_prefill_ms", "average LLM prefill time (ms)", "{:.2f}"),
    ("avg_ttft_ms", "average time to first token (ms), preprocessing included", "{:.2f}"),
    ("avg_ttft_reference_ms", "average time to first token (ms), reference's definition", "{:.2f}"),
    ("avg_decode_tokens_per_s", "average decoding throughput (token/s)", "{:.2f}"),
    ("avg_visual_tokens", "average visual tokens the LLM reads", "{:.1f}"),
)
NOTES = (
    "GPU runtime: CUDA events around each call (Python inside it included). Peak memory: "
    "max_memory_allocated after a reset per call, weights included. The reference's TTFT starts after "
    "video decoding and preprocessing (lmms-eval does them before generate); ours starts with the call, "
    "so both are given. Throughput: tokens, the first included, over the call's time after the first token."
)


def format_summary(summary: Dict[str, float]) -> str:
    """A two-column table of the summary plus the notes on definitions."""
    width = max(len(label) for _, label, _ in SUMMARY_ROWS)
    lines = [f"{'metric':<{width}}  value", "-" * (width + 12)]
    for key, label, fmt in SUMMARY_ROWS:
        lines.append(f"{label:<{width}}  {fmt.format(summary[key])}")
    return "\n".join(lines + ["", NOTES])


def write_csv(requests: List[RequestProfile], path: str) -> None:
    """One row per request, the fields of :class:`RequestProfile` as columns."""
    names = [f.name for f in fields(RequestProfile)]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for request in requests:
            writer.writerow(asdict(request))

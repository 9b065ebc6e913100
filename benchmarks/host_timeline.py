"""Where the host's time goes in one ``tango_prune`` call on CUDA (graphs, the default).

Usage: python benchmarks/host_timeline.py [--shape llava_onevision] [--regime dynamic] [--runs 30]

Wraps the pipeline's host steps with wall-clock timers (no profiler, whose overhead would swamp
sub-millisecond steps) and prints the median of each over ``--runs`` calls after warm-up, with
the whole call (until its outputs are ready) beside them. "wait" is the host waiting for the
statistics graph and their copy; the rest of the call is launch and bookkeeping.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_prune import DTYPES, SHAPES  # noqa: E402
from tango_core import TangoConfig, graphs, pipeline, prune, tango_prune  # noqa: E402
from tango_core.testing.synthetic import structured_clip  # noqa: E402

SPANS: dict = defaultdict(list)
CALL: dict = defaultdict(float)  # label -> ms spent in it during the current call


def _timed(owner, name: str, label: str) -> None:
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        CALL[label] += (time.perf_counter() - start) * 1e3
        return out

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llava_onevision", choices=sorted(SHAPES))
    parser.add_argument("--regime", default="dynamic")
    parser.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    frames, grid, dim, ratio, threshold = SHAPES[args.shape]
    clip = structured_clip(frames, grid, dim, args.regime, 3, 0, dtype=DTYPES[args.dtype], device="cuda")
    config = TangoConfig(retention_ratio=ratio, similarity_threshold=threshold)
    steps = [
        (graphs.TangoGraphs, "prune", "graph path, outputs copied"),
        (graphs, "run_pipeline", "graph path before output copies"),
        (prune, "_validate", "validate inputs"),
        (graphs.CapturedCall, "replay", "graph replays (3)"),
        (pipeline.HostCopy, "__init__", "start statistics copy"),
        (graphs.TangoGraphs, "_video", "video lookup + input copies"),
        (pipeline.HostCopy, "wait", "wait for statistics"),
        (pipeline, "plan_from_statistics", "plan: checks, segments, budgets"),
        (pipeline, "build_layout", "plan: layout tables"),
        (graphs.TangoGraphs, "_run_layout", "layout upload + replay"),
    ]
    for owner, name, label in steps:
        _timed(owner, name, label)
    run = lambda: tango_prune(clip.features, clip.saliency, grid, clip.timestamps, config)  # noqa: E731
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    SPANS.clear()
    for _ in range(args.runs):
        CALL.clear()
        start = time.perf_counter()
        result = run()
        launched = time.perf_counter()
        result.kept_features.sum().item()
        SPANS["call returned (host)"].append((launched - start) * 1e3)
        SPANS["call until outputs ready"].append((time.perf_counter() - start) * 1e3)
        for label, spent in CALL.items():
            SPANS[label].append(spent)
    print(f"{args.shape} {args.regime} {args.dtype}, medians of {args.runs} calls (ms):")
    for label, values in SPANS.items():
        print(f"  {label:36} {statistics.median(values):7.3f}")


if __name__ == "__main__":
    main()

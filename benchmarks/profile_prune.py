"""Profile one ``tango_prune`` call with torch.profiler (kernel counts, host vs device time).

Usage: python benchmarks/profile_prune.py [--shape llava_onevision] [--regime mixed]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_prune import DTYPES, SHAPES  # noqa: E402
from tango_core import TangoConfig, tango_prune  # noqa: E402
from tango_core.testing.synthetic import structured_clip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llava_onevision", choices=sorted(SHAPES))
    parser.add_argument("--regime", default="mixed")
    parser.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--eager", action="store_true", help="cuda_graphs=False: per-stage device times are visible")
    parser.add_argument("--sync-debug", action="store_true", help="warn at every host-device synchronisation")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    frames, grid, dim, ratio, threshold = SHAPES[args.shape]
    clip = structured_clip(frames, grid, dim, args.regime, 3, 0, dtype=DTYPES[args.dtype], device=device)
    config = TangoConfig(retention_ratio=ratio, similarity_threshold=threshold).with_execution(cuda_graphs=not args.eager)
    run = lambda: tango_prune(clip.features, clip.saliency, grid, clip.timestamps, config)  # noqa: E731
    for _ in range(5):
        run()
    if args.sync_debug and device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        run()
        torch.cuda.set_sync_debug_mode("default")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    averages = prof.key_averages()
    print("stages (CPU time includes waiting at synchronisations):")
    for event in averages:
        if event.key.startswith("tango."):
            device_ms = getattr(event, "device_time_total", getattr(event, "cuda_time_total", 0.0)) / 1e3
            print(f"  {event.key:16} cpu {event.cpu_time_total / 1e3:7.3f} ms   device {device_ms:7.3f} ms")
    print(averages.table(sort_by=sort, row_limit=args.rows))


if __name__ == "__main__":
    main()

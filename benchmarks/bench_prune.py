"""Time ``tango_prune`` at the paper's shapes against a plain top-k selection of the same budget.

Usage: python benchmarks/bench_prune.py [--runs 50] [--dtype fp16] [--json results.json]

Inputs are structured synthetic clips (spec section 11) in three regimes (mostly static, mixed,
very dynamic). On CUDA each run is timed with CUDA events; the median over ``--runs`` runs after
``--warmup`` runs is reported, ST-RoPE and everything else included. On CPU wall time is used.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tango_core import TangoConfig, tango_prune  # noqa: E402
from tango_core.synthetic import structured_clip  # noqa: E402

SHAPES = {
    # name: (frames, grid, dim, retention ratio, segmentation threshold)
    "llava_onevision": (32, (14, 14), 3584, 0.1, 0.65),
    "llava_video": (64, (13, 13), 3584, 0.121739, 0.65),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _time(fn, runs: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def topk_baseline(features: torch.Tensor, saliency: torch.Tensor, budget: int) -> torch.Tensor:
    """The floor any pruning method pays: top-k by saliency, sorted, features gathered."""
    keep = torch.topk(saliency.flatten(), budget).indices.sort().values
    return features.flatten(0, 1)[keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--regimes", default="static,mixed,dynamic")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--dim", type=int, default=None, help="override the feature dimension (e.g. 64 to see launch overhead)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]

    rows = []
    for shape in args.shapes.split(","):
        frames, grid, dim, ratio, threshold = SHAPES[shape]
        dim = args.dim or dim
        for regime in args.regimes.split(","):
            clip = structured_clip(frames, grid, dim, regime, num_scenes=3, seed=0, dtype=dtype, device=device)
            config = TangoConfig(retention_ratio=ratio, similarity_threshold=threshold)
            result = tango_prune(clip.features, clip.saliency, grid, clip.timestamps, config)
            kept = result.keep_index.numel()
            tango_ms = _time(
                lambda: tango_prune(clip.features, clip.saliency, grid, clip.timestamps, config),
                args.runs, args.warmup, device,
            )
            topk_ms = _time(lambda: topk_baseline(clip.features, clip.saliency, kept), args.runs, args.warmup, device)
            rows.append(
                {
                    "shape": shape,
                    "regime": regime,
                    "frames": frames,
                    "tokens_per_frame": grid[0] * grid[1],
                    "dim": dim,
                    "ratio": ratio,
                    "segments": len(result.segments),
                    "kept": kept,
                    "kept_fraction": kept / (frames * grid[0] * grid[1]),
                    "tango_median_ms": statistics.median(tango_ms),
                    "tango_p90_ms": sorted(tango_ms)[int(0.9 * (len(tango_ms) - 1))],
                    "topk_median_ms": statistics.median(topk_ms),
                }
            )
            print(f"done {shape} {regime}", file=sys.stderr, flush=True)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\ntango_prune, D={args.dim or 3584}, {args.dtype}, {device_name}, torch {torch.__version__}, median of {args.runs} runs\n")
    header = f"{'shape':16} {'regime':8} {'segs':>4} {'kept':>6} {'kept %':>7} {'tango ms':>9} {'p90 ms':>8} {'top-k ms':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['shape']:16} {row['regime']:8} {row['segments']:>4} {row['kept']:>6} "
            f"{100 * row['kept_fraction']:>6.2f}% {row['tango_median_ms']:>9.3f} {row['tango_p90_ms']:>8.3f} "
            f"{row['topk_median_ms']:>9.3f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"device": device_name, "dtype": args.dtype, "torch": torch.__version__, "rows": rows}
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()

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
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tango_core import TangoConfig, tango_prune  # noqa: E402
from tango_core.testing.synthetic import structured_clip  # noqa: E402

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


def _stream(shape: str, videos: int, dim_override, dtype, device) -> dict:
    """Per-call time over ``videos`` different clips (seeds, scene counts and regimes): with CUDA
    graphs starting from an empty cache, and eagerly, on the same clips."""
    from tango_core import graph_cache

    frames, grid, dim, ratio, threshold = SHAPES[shape]
    dim = dim_override or dim
    config = TangoConfig(retention_ratio=ratio, similarity_threshold=threshold)
    eager_config = config.with_execution(cuda_graphs=False)
    graphs = graph_cache()
    graphs.clear()
    before = (graphs.replays, graphs.captures, graphs.eager_runs)
    regimes = ("static", "mixed", "dynamic")
    times, eager_times = [], []
    for index in tqdm(range(videos), desc=f"stream {shape}", file=sys.stderr):
        clip = structured_clip(frames, grid, dim, regimes[index % 3], 1 + index % 4, 1000 + index, dtype=dtype, device=device)
        eager_times += _time(lambda: tango_prune(clip.features, clip.saliency, grid, clip.timestamps, eager_config), 1, 1, device)
        times += _time(lambda: tango_prune(clip.features, clip.saliency, grid, clip.timestamps, config), 1, 0, device)
    return {
        "shape": shape,
        "videos": videos,
        "mean_ms": statistics.mean(times),
        "median_ms": statistics.median(times),
        "last_half_mean_ms": statistics.mean(times[videos // 2 :]),
        "eager_mean_ms": statistics.mean(eager_times),
        "eager_median_ms": statistics.median(eager_times),
        "replays": graphs.replays - before[0],
        "captures": graphs.captures - before[1],
        "eager_runs": graphs.eager_runs - before[2],
        "times_ms": times,
        "eager_times_ms": eager_times,
    }


def _stage_times(clip, grid, config, runs: int = 20) -> dict:
    """GPU time of each captured graph replayed alone, and host time of the planning between them,
    for the clip the default graph cache saw last (medians, ms)."""
    from tango_core import graph_cache
    from tango_core.graphs import GRAPH_LAYOUT
    from tango_core.layout import build_layout
    from tango_core.stages import plan_from_segments, segments_from_statistics

    video = next(reversed(graph_cache()._videos.values()))
    layout_graph = next(reversed(video.layouts.values()))
    num_frames, num_tokens = clip.saliency.shape
    gpu = {"statistics": [], "rope": [], "layout": []}
    host = []
    for _ in range(runs):
        torch.cuda.synchronize()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        events[0].record()
        video.statistics.replay()
        events[1].record()
        video.rope.replay()
        events[2].record()
        layout_graph.call.replay()
        events[3].record()
        events[3].synchronize()
        for index, name in enumerate(gpu):
            gpu[name].append(events[index].elapsed_time(events[index + 1]))
        start = time.perf_counter()
        statistics_host = video.host_statistics.numpy()
        segments, static_runs = segments_from_statistics(statistics_host, num_frames, num_tokens, config)
        plan = plan_from_segments(static_runs, segments, num_tokens, config)
        layout = build_layout(plan, num_frames, num_tokens, GRAPH_LAYOUT)
        layout_graph.staging.numpy()[:] = layout.packed
        host.append((time.perf_counter() - start) * 1e3)
    out = {f"gpu_{name}_ms": statistics.median(values) for name, values in gpu.items()}
    out["host_plan_ms"] = statistics.median(host)
    return out


def _graph_memory(device: torch.device):
    """Bytes the graph cache holds (allocated memory freed by clearing it), or None off CUDA."""
    if device.type != "cuda":
        return None
    from tango_core import clear_cuda_graphs

    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated(device)
    clear_cuda_graphs()
    return held - torch.cuda.memory_allocated(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--regimes", default="static,mixed,dynamic")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--dim", type=int, default=None, help="override the feature dimension (e.g. 64 to see launch overhead)")
    parser.add_argument("--stream", type=int, default=0, help="also time a stream of this many different clips per shape")
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
            eager_config = config.with_execution(cuda_graphs=False)
            result = tango_prune(clip.features, clip.saliency, grid, clip.timestamps, config)
            kept = result.keep_index.numel()
            first_ms = _time(lambda: tango_prune(clip.features, clip.saliency, grid, clip.timestamps, config), 1, 0, device)
            tango_ms = _time(
                lambda: tango_prune(clip.features, clip.saliency, grid, clip.timestamps, config),
                args.runs, args.warmup, device,
            )
            eager_ms = _time(
                lambda: tango_prune(clip.features, clip.saliency, grid, clip.timestamps, eager_config),
                args.runs, args.warmup, device,
            )
            unfused_config = config.with_execution(fused_kernels=False)
            unfused_ms = _time(
                lambda: tango_prune(clip.features, clip.saliency, grid, clip.timestamps, unfused_config),
                args.runs, args.warmup + 2, device,
            )
            tango_prune(clip.features, clip.saliency, grid, clip.timestamps, config)  # the default's graphs last
            stages = _stage_times(clip, grid, config) if device.type == "cuda" else {}
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
                    "second_call_ms": first_ms[0],
                    "eager_median_ms": statistics.median(eager_ms),
                    "unfused_median_ms": statistics.median(unfused_ms),
                    "topk_median_ms": statistics.median(topk_ms),
                    **stages,
                }
            )
            print(f"done {shape} {regime}", file=sys.stderr, flush=True)

    streams = [_stream(shape, args.stream, dim_override=args.dim, dtype=dtype, device=device) for shape in args.shapes.split(",")] if args.stream else []
    graph_bytes = _graph_memory(device)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\ntango_prune, D={args.dim or 3584}, {args.dtype}, {device_name}, torch {torch.__version__}, median of {args.runs} runs")
    print("tango: default (CUDA graphs and fused Triton kernels on CUDA); 2nd call: the call that captures the layout graph;")
    print("eager: cuda_graphs=False; no Triton: graphs with fused_kernels=False (PyTorch ops only)\n")
    header = (
        f"{'shape':16} {'regime':8} {'segs':>4} {'kept':>6} {'kept %':>7} {'tango ms':>9} {'p90 ms':>8} "
        f"{'2nd call':>9} {'eager ms':>9} {'no Triton':>9} {'top-k ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['shape']:16} {row['regime']:8} {row['segments']:>4} {row['kept']:>6} "
            f"{100 * row['kept_fraction']:>6.2f}% {row['tango_median_ms']:>9.3f} {row['tango_p90_ms']:>8.3f} "
            f"{row['second_call_ms']:>9.3f} {row['eager_median_ms']:>9.3f} {row['unfused_median_ms']:>9.3f} "
            f"{row['topk_median_ms']:>9.3f}"
        )
    if rows and "gpu_layout_ms" in rows[0]:
        print("\nwhere the time goes with graphs (medians, ms): GPU time of each graph replayed alone; host planning")
        print(f"{'shape':16} {'regime':8} {'statistics':>10} {'rope':>6} {'layout':>7} {'host plan':>9}")
        for row in rows:
            print(
                f"{row['shape']:16} {row['regime']:8} {row['gpu_statistics_ms']:>10.3f} {row['gpu_rope_ms']:>6.3f} "
                f"{row['gpu_layout_ms']:>7.3f} {row['host_plan_ms']:>9.3f}"
            )
    for stream in streams:
        print(
            f"\nstream of {stream['videos']} different {stream['shape']} clips (empty graph cache): "
            f"mean {stream['mean_ms']:.3f} ms, median {stream['median_ms']:.3f} ms, "
            f"last half mean {stream['last_half_mean_ms']:.3f} ms (eager: mean {stream['eager_mean_ms']:.3f} ms, "
            f"median {stream['eager_median_ms']:.3f} ms); layouts replayed {stream['replays']}, "
            f"captured {stream['captures']}, run eagerly {stream['eager_runs']}"
        )
    if graph_bytes is not None:
        print(f"\nGPU memory held by the graph cache at the end: {graph_bytes / 2**20:.0f} MiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"device": device_name, "dtype": args.dtype, "torch": torch.__version__, "rows": rows, "streams": streams, "graph_cache_bytes": graph_bytes}
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()

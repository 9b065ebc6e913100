"""A sweep script on a GPU, timed: wall time, samples per second, and how busy the GPU was.

Usage (on a GPU machine): python benchmarks/eval_sweep_gpu.py --family llava_onevision --samples 10 --out OUT

It saves a 7B-architecture checkpoint with random weights (``save_random_7b.py``), writes a
generated benchmark of ``4 x samples`` questions in the four benchmarks' own formats
(``tango_eval.demo_data``), runs the family's sweep script (``run_eval_ov.sh`` ...) with
``--with-vanilla --ratios R`` on them, and samples ``nvidia-smi``'s GPU utilisation (the share of
each ~100 ms period in which a kernel ran) throughout. Per run of the sweep (vanilla, each ratio)
it reports: wall time (process start to exit: VLMEvalKit import, model load, datasets, scoring),
the inference part of it (sum of per-sample wall times from the records), samples per second
over both, and the GPU-busy share of the wall time. JSON to ``OUT/eval_sweep_gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "VLMEvalKit")]

SCRIPTS = {"llava_onevision": "run_eval_ov.sh", "llava_video": "run_eval_video.sh", "qwen2_5_vl": "run_eval_qwen.sh"}


class GpuSampler:
    """``nvidia-smi`` utilisation samples, stamped with this machine's clock."""

    def __init__(self, period_ms: int = 100) -> None:
        self.samples: List[Tuple[float, float, float]] = []  # (time, utilisation %, memory MiB)
        self.process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", f"-lms={period_ms}"],
            stdout=subprocess.PIPE, text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                self.samples.append((time.time(), float(parts[0]), float(parts[1])))
            except (ValueError, IndexError):
                continue

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()

    def between(self, start: float, end: float) -> Dict[str, float]:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return {"gpu_busy_share": float("nan"), "utilisation_readings": 0, "peak_memory_gib": float("nan")}
        return {
            "gpu_busy_share": sum(s[1] for s in inside) / (100.0 * len(inside)),
            "utilisation_readings": len(inside),
            "peak_memory_gib": max(s[2] for s in inside) / 1024.0,
        }


def statistics_mean(values):
    return sum(values) / len(values) if values else float("nan")


def run_totals(folder: Path) -> Dict[str, float]:
    """Samples, failures and summed per-sample wall time of one run folder (from its records)."""
    samples = failed = 0
    inference_s = 0.0
    for summary in folder.glob("*/*_tango.json"):
        data = json.loads(summary.read_text())
        samples += int(data["samples"])
        failed += int(data["failed"])
    for records in folder.glob("*/records/*/rank*.jsonl"):
        for line in records.read_text().splitlines():
            if line.strip():
                inference_s += float(json.loads(line).get("wall_s", 0.0))
    return {"samples": samples, "failed": failed, "inference_s": inference_s}


def long_clip(args) -> str:
    """Write one generated clip of ``seconds`` at ``fps`` and ``height x width`` (moving squares over a
    shading background) to ``path``; used to replace the demo's 3-second clips."""
    path, seconds, fps, height, width, seed = args
    import numpy as np

    from tango_core.models.video import write_video

    rng = np.random.default_rng(seed)
    count = int(seconds * fps)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([90 + 60 * np.sin(xs / 90), 110 + 50 * np.cos(ys / 70), 100 + 0 * xs], -1)
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    speed = rng.uniform(2, 8, size=(3, 2))
    for t in range(count):
        frame = base + 20 * np.sin(t / 25.0)
        for k, colour in enumerate(([230, 40, 40], [40, 200, 60], [50, 80, 230])):
            cx = int((200 + speed[k, 0] * t * 4) % (width - 80))
            cy = int((100 + 150 * k + speed[k, 1] * t) % (height - 80))
            frame[cy:cy + 80, cx:cx + 80] = colour
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    write_video(path, frames, fps=fps)
    return path


def make_long_clips(samples, seconds, fps: float, size, workers: int) -> float:
    """Overwrite every sample's clip with a long one (in parallel); returns the seconds it took."""
    import random
    from concurrent.futures import ProcessPoolExecutor

    started = time.time()
    rng = random.Random(0)
    jobs = [(s.video, rng.uniform(*seconds), fps, size[1], size[0], i) for i, s in enumerate(samples)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(long_clip, jobs))
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(SCRIPTS), default="llava_onevision")
    parser.add_argument("--samples", type=int, default=10, help="questions per benchmark (4 benchmarks)")
    parser.add_argument("--ratios", default="0.1")
    parser.add_argument("--benchmarks", default="Video-MME,MVBench,MLVU,LongVideoBench")
    parser.add_argument("--long-clips", default=None, help="replace the clips by generated ones of MIN,MAX seconds")
    parser.add_argument("--clip-size", default="1280x720")
    parser.add_argument("--clip-fps", type=float, default=2.0)
    parser.add_argument("--profile", action="store_true", help="run the sweep with --profile and report wall / GPU time")
    parser.add_argument("--prefetch", type=int, default=None)
    parser.add_argument("--work", type=Path, default=Path("/tmp/eval_sweep_gpu"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from save_random_7b import save_random_checkpoint  # noqa: E402
    from tango_eval.demo_data import write_demo_benchmarks

    checkpoint = args.work / f"{args.family}_7b_random"
    started = time.time()
    if not (checkpoint / "config.json").exists():
        save_random_checkpoint(args.family, checkpoint)
        torch.cuda.empty_cache()
    saved_s = time.time() - started
    data_root = args.work / "data"
    benchmarks = args.benchmarks.split(",")
    written = write_demo_benchmarks(str(data_root), benchmarks=benchmarks, samples_per_benchmark=args.samples, seed=0)
    clips_s = None
    if args.long_clips:
        low, high = (float(v) for v in args.long_clips.split(","))
        width, height = (int(v) for v in args.clip_size.split("x"))
        clips_s = make_long_clips([s for b in benchmarks for s in written[b]], (low, high), args.clip_fps, (width, height), 16)
        print(f"long clips written in {clips_s:.1f} s", flush=True)
    sweep_dir = args.work / "sweep"
    sampler = GpuSampler()
    sweep_start = time.time()
    command = ["bash", str(REPO / SCRIPTS[args.family]), "--model-path", str(checkpoint), "--data-root", str(data_root),
               "--ratios", args.ratios, "--with-vanilla", "--work-dir", str(sweep_dir), "--offline", "--data", *benchmarks]
    if args.profile:
        command.append("--profile")
    if args.prefetch is not None:
        command += ["--prefetch", str(args.prefetch)]
    with (args.out / "sweep.log").open("w") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    sweep_end = time.time()
    sampler.stop()

    rows = []
    for line in (sweep_dir / "sweep_runs.jsonl").read_text().splitlines():
        run = json.loads(line)
        totals = run_totals(Path(run["folder"]))
        gpu = sampler.between(run["start"], run["end"])
        profiles = [json.loads(p.read_text())["summary"] for p in Path(run["folder"]).glob("*/*_profile_rank0.json")]
        loop = {}
        if profiles:
            loop = {
                "loop_wall_s": sum(p["total_runtime_s"] for p in profiles),
                "loop_gpu_s": sum(p["total_gpu_runtime_s"] for p in profiles),
                "avg_ttft_ms": statistics_mean([p["avg_ttft_ms"] for p in profiles]),
                "avg_decode_tokens_per_s": statistics_mean([p["avg_decode_tokens_per_s"] for p in profiles]),
            }
            loop["wall_over_gpu"] = loop["loop_wall_s"] / loop["loop_gpu_s"]
        rows.append({
            **run, **totals, **gpu, **loop,
            "samples_per_s": totals["samples"] / run["wall_s"],
            "inference_samples_per_s": totals["samples"] / totals["inference_s"] if totals["inference_s"] else float("nan"),
        })
    result = {
        "family": args.family, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "status": status,
        "checkpoint_save_s": saved_s, "sweep_wall_s": sweep_end - sweep_start, "runs": rows,
        "whole_sweep_gpu": sampler.between(sweep_start, sweep_end), "date": time.strftime("%Y-%m-%d"),
        "long_clips_written_s": clips_s, "command": command,
    }
    (args.out / "eval_sweep_gpu.json").write_text(json.dumps(result, indent=1))
    for name in ("summary.md", "summary.csv"):
        if (sweep_dir / name).exists():
            (args.out / name).write_text((sweep_dir / name).read_text())
    print(f"\n{SCRIPTS[args.family]} on {result['gpu']}, 7B random weights, {4 * args.samples} generated questions per run\n")
    header = f"{'run':14} {'wall s':>8} {'infer s':>8} {'samples':>7} {'failed':>6} {'samples/s':>9} {'infer/s':>8} {'GPU busy':>8} {'peak GiB':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        label = "vanilla" if row["method"] == "vanilla" else f"tango r={row['ratio']:g}"
        print(f"{label:14} {row['wall_s']:>8.1f} {row['inference_s']:>8.1f} {row['samples']:>7} {row['failed']:>6} "
              f"{row['samples_per_s']:>9.2f} {row['inference_samples_per_s']:>8.2f} {100 * row['gpu_busy_share']:>7.1f}% "
              f"{row['peak_memory_gib']:>8.1f}")
    if any("wall_over_gpu" in row for row in rows):
        print("\nrequest loop (profiler: wall clock around the loop, CUDA events around each answer)")
        for row in rows:
            if "wall_over_gpu" in row:
                label = "vanilla" if row["method"] == "vanilla" else f"tango r={row['ratio']:g}"
                print(f"{label:14} loop wall {row['loop_wall_s']:.1f} s, GPU {row['loop_gpu_s']:.1f} s, wall/GPU "
                      f"{row['wall_over_gpu']:.2f}, TTFT {row['avg_ttft_ms']:.1f} ms, {row['avg_decode_tokens_per_s']:.1f} tok/s")
    print(f"\nsweep wall {result['sweep_wall_s']:.1f} s, exit status {status}; checkpoint written in {saved_s:.1f} s")
    sys.exit(status)


if __name__ == "__main__":
    main()

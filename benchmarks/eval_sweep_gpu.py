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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(SCRIPTS), default="llava_onevision")
    parser.add_argument("--samples", type=int, default=10, help="questions per benchmark (4 benchmarks)")
    parser.add_argument("--ratios", default="0.1")
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
    write_demo_benchmarks(str(data_root), samples_per_benchmark=args.samples, seed=0)
    sweep_dir = args.work / "sweep"
    sampler = GpuSampler()
    sweep_start = time.time()
    command = ["bash", str(REPO / SCRIPTS[args.family]), "--model-path", str(checkpoint), "--data-root", str(data_root),
               "--ratios", args.ratios, "--with-vanilla", "--work-dir", str(sweep_dir), "--offline"]
    with (args.out / "sweep.log").open("w") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    sweep_end = time.time()
    sampler.stop()

    rows = []
    for line in (sweep_dir / "sweep_runs.jsonl").read_text().splitlines():
        run = json.loads(line)
        totals = run_totals(Path(run["folder"]))
        gpu = sampler.between(run["start"], run["end"])
        rows.append({
            **run, **totals, **gpu,
            "samples_per_s": totals["samples"] / run["wall_s"],
            "inference_samples_per_s": totals["samples"] / totals["inference_s"] if totals["inference_s"] else float("nan"),
        })
    result = {
        "family": args.family, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "status": status,
        "checkpoint_save_s": saved_s, "sweep_wall_s": sweep_end - sweep_start, "runs": rows,
        "whole_sweep_gpu": sampler.between(sweep_start, sweep_end), "date": time.strftime("%Y-%m-%d"),
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
    print(f"\nsweep wall {result['sweep_wall_s']:.1f} s, exit status {status}; checkpoint written in {saved_s:.1f} s")
    sys.exit(status)


if __name__ == "__main__":
    main()

"""How long VLMEvalKit's LongVideoBench takes to build one video model's prompt, with and without
the harness's ``skip_unused_frame_decoding`` (CPU; no model).

Usage: python benchmarks/prompt_building.py [--clips 3] [--seconds 45] [--size 640x360] [--fps 24] [--json out.json]

Writes a generated LongVideoBench of ``--clips`` questions (``tango_eval.demo_data``) whose clips are
replaced by generated ones of ``--seconds`` at ``--fps``, builds the dataset as the runner does for
32 frames (LLaVA-OneVision's setting) and for 2 fps (Qwen2.5-VL's), and times
``build_prompt(row, video_llm=True)`` per question: VLMEvalKit's own (it decodes the sampled
frames and drops them) against the harness's (it decodes nothing). Prints the medians and checks
that both give the same message.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "VLMEvalKit"), str(Path(__file__).resolve().parent)]

from eval_sweep_gpu import long_clip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        from tango_eval.vlmeval_env import configure_environment, import_vlmeval

        configure_environment(str(Path(tmp) / "data"), offline=True, lmu_data=str(Path(tmp) / "lmu"))
        import_vlmeval()
        from tango_eval.benchmarks import BENCHMARKS, dataset_entry
        from tango_eval.demo_data import write_demo_benchmarks
        from tango_eval.runner import build_dataset

        samples = write_demo_benchmarks(Path(tmp) / "data", benchmarks=["LongVideoBench"], samples_per_benchmark=args.clips)
        started = time.perf_counter()
        for i, sample in enumerate(samples["LongVideoBench"]):
            long_clip((sample.video, args.seconds, args.fps, height, width, i))
        print(f"{args.clips} clips of {args.seconds:.0f} s at {width}x{height}, {args.fps:g} fps written in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        result = {"clips": args.clips, "seconds": args.seconds, "size": args.size, "fps": args.fps, "settings": {}}
        for label, options in (("32 frames", {"nframe": 32}), ("2 fps", {"fps": 2.0})):
            skipping = build_dataset(dataset_entry(BENCHMARKS["LongVideoBench"], **options))
            vlmevalkit = copy.copy(skipping)
            del vlmevalkit.save_video_frames  # back to the class's own method
            times = {"vlmevalkit": [], "harness": []}
            for row in range(len(skipping)):
                for name, dataset in (("vlmevalkit", vlmevalkit), ("harness", skipping)):
                    start = time.perf_counter()
                    message = dataset.build_prompt(row, video_llm=True)
                    times[name].append((time.perf_counter() - start) * 1e3)
                    if name == "vlmevalkit":
                        expected = message
                assert message == expected, "the harness's prompt differs from VLMEvalKit's"
            medians = {name: round(statistics.median(values), 2) for name, values in times.items()}
            result["settings"][label] = medians
            print(f"LongVideoBench, {label}: build_prompt median {medians['vlmevalkit']:.1f} ms (VLMEvalKit's) -> "
                  f"{medians['harness']:.2f} ms (harness), the same messages", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

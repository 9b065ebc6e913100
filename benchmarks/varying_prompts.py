"""Prompts of varying length in a row, as in an evaluation: each new padded length is a new prefill
graph to capture. Times every call and compares the answers with the growing cache's.

Usage (GPU): python benchmarks/varying_prompts.py [--calls 16] [--json out.json]

LLaVA-OneVision-7B with random weights, r = 0.1, one 360x640 clip, questions of 1 to ``calls``
repeated sentences (prompt lengths across several multiples of 64), the same questions twice more (a
padded length is captured the second time it is met, replayed after). Reported per call: TTFT and
the whole answer (ms); the medians of each pass; whether each answer equals ``decoding="dynamic"``'s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from smoke_7b import build, moving_objects_video  # noqa: E402
from speed_7b import adapter  # noqa: E402

from tango_core.models.presets import paper_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, head, _ = build("llava_onevision", Path(tmp))
        video = moving_objects_video(32)
        tango = paper_config("llava_onevision", 0.1)
        fast = adapter("llava_onevision", model, tokenizer, head, tango)
        exact = adapter("llava_onevision", model, tokenizer, head, tango, decoding="dynamic")
        for runner in (fast, exact):
            runner.stop_token_ids = []
        questions = [" ".join(["Which object moves faster?"] * n) + " Answer with the letter." for n in range(1, args.calls + 1)]
        fast.generate(video, "warm-up", max_new_tokens=4)
        passes = []
        for _ in range(3):
            rows = []
            for question in questions:
                started = time.perf_counter()
                answer = fast.generate(video, question, max_new_tokens=16)
                torch.cuda.synchronize()
                rows.append({"ttft_ms": answer.stats.first_token_ms,
                             "answer_ms": (time.perf_counter() - started) * 1e3, "ids": answer.token_ids.tolist()})
            passes.append(rows)
        same = [exact.generate(video, q, max_new_tokens=16).token_ids.tolist() == r["ids"] for q, r in zip(questions, passes[-1])]
    out = {"prefill_graphs": len(fast._static.prompts), "answers_equal_dynamic": sum(same), "answers": len(same)}
    for number, rows in enumerate(passes, 1):
        out[f"pass_{number}_ttft_median_ms"] = statistics.median(r["ttft_ms"] for r in rows)
        out[f"pass_{number}_answer_median_ms"] = statistics.median(r["answer_ms"] for r in rows)
        out[f"pass_{number}_ttft_ms"] = [round(r["ttft_ms"], 1) for r in rows]
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

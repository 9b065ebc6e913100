"""Where Qwen2.5-VL's host time goes between its ViT and its prefill (the profiler's "other" stage).

Usage (GPU): python benchmarks/qwen_host_path.py [--calls 5] [--json out.json]

Builds Qwen2.5-VL-7B with random weights, runs ``prepare`` at r = 0.1 on the generated 32-frame clip
(after two warm-up calls), and reports per call the wall-clock milliseconds of the host steps
(the adapter's ``encode`` / ``prepare_text`` / ``prune`` / ``splice`` and, inside them, transformers' ``get_rope_index``
and ``get_placeholder_mask`` and the prompt's tokenising), each step ended by a synchronisation so
that its GPU work is inside it; then one more call with PyTorch's sync debug mode on, which lists
every place the host waited for the GPU (file and line of the adapter or library code).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from smoke_7b import QUESTION, build, moving_objects_video  # noqa: E402

from tango_core.models.presets import paper_config  # noqa: E402
from tango_core.models.qwen2_5_vl import Qwen25VLTango  # noqa: E402

SPANS: dict = defaultdict(list)


def timed(owner, name: str, label: str, sync: bool) -> None:
    """Wrap ``owner.name`` so that each call adds its wall milliseconds to ``SPANS[label]``."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = original(*args, **kwargs)
        if sync:
            torch.cuda.synchronize()
        SPANS[label].append((time.perf_counter() - start) * 1e3)
        return out

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("qwen_host_path.py needs a CUDA GPU.")
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, _, _ = build("qwen2_5_vl", Path(tmp))
        runner = Qwen25VLTango(model, tokenizer, paper_config("qwen2_5_vl", 0.1))
        video = moving_objects_video(32)
        for _ in range(2):
            runner.prepare(video, QUESTION)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.calls):
            runner.prepare(video, QUESTION)
        torch.cuda.synchronize()
        unsynced_ms = (time.perf_counter() - start) * 1e3 / args.calls
        host_return, device_done = [], []
        for _ in range(args.calls):  # how far the host runs ahead of the GPU: its work hidden or not
            start = time.perf_counter()
            runner.prepare(video, QUESTION)
            host_return.append((time.perf_counter() - start) * 1e3)
            torch.cuda.synchronize()
            device_done.append((time.perf_counter() - start) * 1e3)
        core = model.model
        for owner, name in ((runner, "encode"), (runner, "prepare_text"), (runner, "prune"), (runner, "splice")):
            timed(owner, name, name, sync=True)
        for owner, name in ((core, "get_rope_index"), (core, "get_placeholder_mask"), (runner, "_text_inputs"),
                            (runner, "vision_tables"), (runner, "video_rope_block")):
            timed(owner, name, f"  {name}", sync=True)
        for _ in range(args.calls):
            runner.prepare(video, QUESTION)
        result = {"prepare_ms_unsynced": round(unsynced_ms, 2),
                  "prepare_host_return_ms": round(statistics.median(host_return), 2),
                  "prepare_device_done_ms": round(statistics.median(device_done), 2),
                  "steps_ms": {label: round(statistics.median(values), 2) for label, values in SPANS.items()}}
        syncs = defaultdict(int)
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runner.prepare(video, QUESTION)
        torch.cuda.set_sync_debug_mode("default")
        for warning in caught:
            if "synchroniz" in str(warning.message):
                syncs[f"{Path(warning.filename).name}:{warning.lineno}"] += 1
        result["syncs_in_one_prepare"] = dict(sorted(syncs.items(), key=lambda kv: -kv[1]))
        result["sync_count"] = sum(syncs.values())
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    try:
        main()
    except Exception:  # noqa: BLE001 - print the whole error on the device
        traceback.print_exc()
        raise

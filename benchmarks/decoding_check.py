"""GPU check of the fast execution paths against the exact ones, at 7B size with random weights.

Usage (GPU): python benchmarks/decoding_check.py [--families qwen2_5_vl,llava_onevision] [--json out.json]

* Decoding on a static cache replayed as CUDA graphs against transformers' growing cache, in
  float32 and in the model's dtype: the step at which the tokens first differ, and the largest
  difference of the logits before it (random weights give near-uniform logits, so half-precision
  rounding can flip a greedy choice; float32 shows whether the two compute the same thing).
* Qwen2.5-VL's ViT, each speed-up added in turn (all windows in one attention call, MLPs at an
  aligned width, compiled blocks) against transformers' own: whether PyTorch's variable-length
  attention ran, the time and the largest output difference of each, and the top CUDA kernels.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from smoke_7b import QUESTION, build, moving_objects_video  # noqa: E402
from speed_7b import adapter  # noqa: E402

from tango_core.models.presets import paper_config  # noqa: E402


def compare_decoding(family, model, tokenizer, head, video, steps: int = 32) -> dict:
    tango = paper_config(family, 0.1)
    runs = {}
    for mode in ("graphs", "dynamic"):
        runner = adapter(family, model, tokenizer, head, tango, decoding=mode)
        runner.stop_token_ids = []
        runner.decode(runner.prepare(video, QUESTION), 4)  # warm-up (captures the graph)
        runs[mode] = runner.decode(runner.prepare(video, QUESTION), steps, keep_logits=True)
    (ids_g, logits_g), (ids_d, logits_d) = runs["graphs"], runs["dynamic"]
    differ = (ids_g != ids_d).nonzero()
    first = int(differ[0]) if differ.numel() else steps
    upto = max(first, 1)
    return {
        "first_differing_step": first,
        "max_logit_diff_before": float((logits_g[:upto] - logits_d[:upto]).abs().max()),
        "logit_scale": float(logits_d[:upto].abs().max()),
    }


def vit_timing(model, tokenizer, video) -> dict:
    from tango_core.models import vision_attention

    tango = paper_config("qwen2_5_vl", 0.1)
    out = {"varlen_available": vision_attention.varlen_available(torch.device("cuda"), model.dtype)}
    modes = {  # each adds one speed-up to the one before
        "transformers": {"vision_attention": "transformers", "vision_blocks": "transformers"},
        "batched": {"vision_attention": "batched", "vision_blocks": "transformers"},
        "padded": {"vision_attention": "batched", "vision_blocks": "padded"},
        "compiled": {"vision_attention": "batched", "vision_blocks": "compiled"},
    }
    reference = None
    for mode, options in modes.items():
        runner = adapter("qwen2_5_vl", model, tokenizer, None, tango, **options)
        inputs = runner.prepare_inputs(video, QUESTION)
        with torch.inference_mode():
            for _ in range(2):
                runner.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, True)
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(3):
                runner.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, True)
            torch.cuda.synchronize()
            out[f"vit_ms_{mode}"] = (time.perf_counter() - started) / 3 * 1e3
            embeds, saliency = runner.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, True)
            if reference is None:
                reference = (embeds.float(), saliency)
            else:
                out[f"vit_max_abs_diff_{mode}"] = float((embeds.float() - reference[0]).abs().max())
                out[f"saliency_max_abs_diff_{mode}"] = float((saliency - reference[1]).abs().max())
            if mode == "compiled":
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    runner.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, True)
                    torch.cuda.synchronize()
                out["top_kernels"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=8)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="qwen2_5_vl,llava_onevision")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            model, tokenizer, head, dtype = build(family, Path(tmp))
            video = moving_objects_video(64 if family == "llava_video" else 32)
            results[family] = {str(dtype): compare_decoding(family, model, tokenizer, head, video)}
            if family == "qwen2_5_vl":
                results[family]["vit"] = vit_timing(model, tokenizer, video)
            model.float()
            if head is not None:
                head.float()
            results[family]["torch.float32"] = compare_decoding(family, model, tokenizer, head, video)
            print(family, json.dumps({k: v for k, v in results[family].items() if k != "vit"}), flush=True)
            if "vit" in results[family]:
                vit = dict(results[family]["vit"])
                print(vit.pop("top_kernels"))
                print(json.dumps(vit), flush=True)
            del model, head
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

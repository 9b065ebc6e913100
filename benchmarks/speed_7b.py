"""Time to first token and decoding speed of the three families at full size, vanilla vs Tango.

Usage (GPU): python benchmarks/speed_7b.py [--families ...] [--repeats 3] [--new-tokens 32]
    [--decoding compiled] [--tokenizer word] [--ablate] [--json out.json]

Each family is built at 7B size with random weights (they time like real ones), and answers one
generated 360x640 clip (frames given as an array: no video decoding) with the default execution:
frames resized on the GPU (LLaVA), SigLIP's GELU in its product's epilogue and its
tower replayed as a CUDA graph (LLaVA); Qwen2.5-VL's ViT with all windows in one attention call, its
MLPs at an aligned width and its blocks compiled; the prompt's prefill and the decoding steps on a
static cache replayed as CUDA graphs (LLaVA-Video's intra-LLM prefill eagerly), the steps
``torch.compile``-d with ``--decoding compiled`` (the default here). Settings: vanilla and Tango at r = 0.1, 0.15, 0.2 (the paper's settings; LLaVA-Video's
pre-LLM ratios 0.121739, 0.182609, 0.243478). Reported per setting, with the profiler's definitions
(``tango_core.models.profiling``): TTFT (from the call, preprocessing included) and its parts,
decoding throughput, peak memory, the speed-up of TTFT and of a whole ``--new-tokens``-token answer
over vanilla. Checks on the same run: graphed (and compiled) decoding gives the growing cache's
tokens; the device resize stays close to PIL's; the fast ViT (Qwen) and the fast SigLIP tower (LLaVA)
match transformers' own.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from smoke_7b import FAMILIES, QUESTION, build, moving_objects_video  # noqa: E402

from tango_core.models.llava import LlavaTango  # noqa: E402
from tango_core.models.presets import paper_config  # noqa: E402
from tango_core.models.profiling import Profiler  # noqa: E402
from tango_core.models.qwen2_5_vl import Qwen25VLTango  # noqa: E402

RATIOS = (0.1, 0.15, 0.2)


def adapter(family: str, model, tokenizer, head, tango, **options):
    if family == "qwen2_5_vl":
        return Qwen25VLTango(model, tokenizer, tango, **options)
    frames = 64 if family == "llava_video" else 32
    return LlavaTango(model, tokenizer, tango=tango, family=family, num_frames=frames, saliency_head=head, **options)


def measure(runner, video: np.ndarray, repeats: int, new_tokens: int) -> dict:
    runner.stop_token_ids = []  # random weights: answer the whole budget every time
    for _ in range(2):  # warm-up: Triton compiles, CUDA graphs are captured
        runner.generate(video, QUESTION, max_new_tokens=new_tokens)
    with Profiler(runner) as profiler:
        for _ in range(repeats):
            generation = runner.generate(video, QUESTION, max_new_tokens=new_tokens)
    requests = profiler.requests

    def median(name):
        return statistics.median(getattr(r, name) for r in requests)

    return {
        "ttft_ms": median("ttft_ms"), "preprocess_ms": median("preprocess_ms"), "vit_ms": median("vit_ms"),
        "other_ms": median("other_ms"), "prefill_ms": median("prefill_ms"), "answer_ms": median("total_ms"),
        "gpu_ms": median("gpu_ms"), "decode_tokens_per_s": median("decode_tokens_per_s"),
        "peak_memory_gib": max(r.peak_memory_gib for r in requests), "prune_ms": generation.stats.times_ms.get("prune", 0.0),
        "visual_before": generation.stats.visual_tokens_before, "visual_after": generation.stats.visual_tokens_after,
        "visual_after_intra_llm": generation.stats.visual_tokens_after_intra_llm, "new_tokens": int(generation.token_ids.numel()),
    }


def checks(family: str, model, tokenizer, head, video: np.ndarray, decoding: str) -> dict:
    """Fast paths against the exact ones on this GPU."""
    out = {}
    tango = paper_config(family, 0.1)
    dynamic = adapter(family, model, tokenizer, head, tango, decoding="dynamic")
    dynamic.stop_token_ids = []
    ids_dynamic = dynamic.decode(dynamic.prepare(video, QUESTION), 32)[0]
    for mode in sorted({"graphs", decoding}):
        fast = adapter(family, model, tokenizer, head, tango, decoding=mode)
        fast.stop_token_ids = []
        ids = fast.decode(fast.prepare(video, QUESTION), 32)[0]
        out[f"{mode}_decoding_same_tokens"] = bool(torch.equal(ids, ids_dynamic))
        out[f"{mode}_decoding_tokens_agreeing"] = int((ids == ids_dynamic).sum())
        out[f"{mode}_decoding_first_differing_token"] = next((i for i in range(len(ids)) if ids[i] != ids_dynamic[i]), None)
    if family == "qwen2_5_vl":
        looped = adapter(family, model, tokenizer, head, tango, vision_attention="transformers", vision_blocks="transformers")
        batched = adapter(family, model, tokenizer, head, tango)
        inputs = looped.prepare_inputs(video, QUESTION)
        with torch.inference_mode():
            a, sa = looped.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, True)
            b, sb = batched.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, True)
        out["fast_vit_max_abs_diff"] = float((a.float() - b.float()).abs().max())
        out["fast_vit_saliency_max_abs_diff"] = float((sa - sb).abs().max())
        keep_a = set(looped.prepare(video, QUESTION).keep_index.tolist())
        keep_b = set(batched.prepare(video, QUESTION).keep_index.tolist())
        out["fast_vit_keep_jaccard"] = len(keep_a & keep_b) / len(keep_a | keep_b)
    else:
        pil = adapter(family, model, tokenizer, head, tango, preprocessing="pil")
        gpu = adapter(family, model, tokenizer, head, tango, preprocessing="torch")
        frames = pil.load_clip(video).frames
        grey = 127.5
        diff = (pil.preprocess(frames).float() - gpu.preprocess(frames).float()).abs() * grey
        out["gpu_resize_mean_abs_grey_levels"] = float(diff.mean())
        out["gpu_resize_max_abs_grey_levels"] = float(diff.max())
        keep_a = set(pil.prepare(video, QUESTION).keep_index.tolist())
        keep_b = set(gpu.prepare(video, QUESTION).keep_index.tolist())
        out["gpu_resize_keep_jaccard"] = len(keep_a & keep_b) / len(keep_a | keep_b)
        exact = adapter(family, model, tokenizer, head, tango, vision_blocks="transformers")
        fast = adapter(family, model, tokenizer, head, tango)
        with torch.inference_mode():
            pixels = gpu.preprocess(frames)
            reference = exact.vision_hidden_states(pixels)
            for _ in range(3):  # the third call replays the captured graph
                hidden = fast.vision_hidden_states(pixels)
            out["fast_tower_max_abs_diff"] = float((hidden.float() - reference.float()).abs().max())
            out["fast_tower_mean_abs_diff"] = float((hidden.float() - reference.float()).abs().mean())
            for name, runner in (("transformers_tower_ms", exact), ("fast_tower_ms", fast)):
                torch.cuda.synchronize()
                started = time.perf_counter()
                for _ in range(5):
                    runner.vision_hidden_states(pixels)
                torch.cuda.synchronize()
                out[name] = (time.perf_counter() - started) * 1e3 / 5
        keep_a = set(exact.prepare(video, QUESTION).keep_index.tolist())
        keep_b = set(fast.prepare(video, QUESTION).keep_index.tolist())
        out["fast_tower_keep_jaccard"] = len(keep_a & keep_b) / len(keep_a | keep_b)
        started = time.perf_counter()
        pil.preprocess(frames)
        torch.cuda.synchronize()
        out["pil_resize_ms"] = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        gpu.preprocess(frames)
        torch.cuda.synchronize()
        out["gpu_resize_ms"] = (time.perf_counter() - started) * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--decoding", default="compiled", help="the adapters' decoding mode (default compiled)")
    parser.add_argument("--tokenizer", choices=("word", "tiny"), default="word",
                        help="LLaVA's prompt tokenizer: word (Qwen2's token counts, default) or tiny (the test one, "
                             "about twice the text tokens; the earlier tables)")
    parser.add_argument("--ablate", action="store_true",
                        help="also r = 0.1 without compiled prefills and steps (-compile) and, for LLaVA, with the frames "
                             "uploaded at once (-pieces)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("speed_7b.py needs a CUDA GPU.")
    rows, verified = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            model, tokenizer, head, dtype = build(family, Path(tmp), tokenizer=args.tokenizer)
            video = moving_objects_video(64 if family == "llava_video" else 32)
            settings = [("vanilla", None, None, {})] + [("tango", r, paper_config(family, r), {}) for r in RATIOS]
            if args.ablate:  # r = 0.1 with one speed-up taken away at a time
                first = paper_config(family, RATIOS[0])
                settings.append(("-compile", RATIOS[0], first, {"decoding": "graphs"}))
                if family != "qwen2_5_vl":
                    settings.append(("-pieces", RATIOS[0], first, {"upload_chunk_frames": None}))
            for label, ratio, tango, options in settings:
                started = time.perf_counter()
                runner = adapter(family, model, tokenizer, head, tango, **{"decoding": args.decoding, **options})
                result = measure(runner, video, args.repeats, args.new_tokens)
                with torch.inference_mode():
                    result["prompt_tokens"] = int(runner.prepare(video, QUESTION).inputs_embeds.shape[1])
                result.update(family=family, setting=label, ratio=ratio, dtype=str(dtype).replace("torch.", ""),
                              tokenizer=args.tokenizer if family != "qwen2_5_vl" else "tiny (its checkpoint's)",
                              pre_llm_ratio=None if tango is None else tango.retention_ratio,
                              decoding=options.get("decoding", args.decoding), options={k: str(v) for k, v in options.items()},
                              seconds_with_warmup=time.perf_counter() - started)
                rows.append(result)
                print(f"done {family} {label} {ratio}: ttft {result['ttft_ms']:.1f} ms, {result['decode_tokens_per_s']:.1f} tok/s "
                      f"({result['seconds_with_warmup']:.0f} s with warm-up)", file=sys.stderr, flush=True)
                save(args.json, rows, verified)
            verified[family] = checks(family, model, tokenizer, head, video, args.decoding)
            print(f"checks {family}: {verified[family]}", file=sys.stderr, flush=True)
            save(args.json, rows, verified)
            del model, head
            gc.collect()
            torch.cuda.empty_cache()
    vanilla = {r["family"]: r for r in rows if r["setting"] == "vanilla"}
    for row in rows:
        base = vanilla[row["family"]]
        row["ttft_speedup"] = base["ttft_ms"] / row["ttft_ms"]
        row["answer_speedup"] = base["answer_ms"] / row["answer_ms"]
        row["tango_prune_share_of_ttft"] = row["prune_ms"] / row["ttft_ms"]
        row["other_share_of_ttft"] = row["other_ms"] / row["ttft_ms"]

    print(f"\n7B random weights, {torch.cuda.get_device_name()}, torch {torch.__version__}; "
          f"median of {args.repeats} calls after 2 warm-ups; {args.new_tokens}-token answers\n")
    header = (f"{'family':16} {'setting':8} {'ratio':>6} {'to LLM':>7} {'prompt':>7} {'TTFT':>7} {'preproc':>7} {'vit':>7} {'other':>7} "
              f"{'prefill':>7} {'tok/s':>7} {'answer':>8} {'TTFT x':>7} {'answer x':>8} {'peak GiB':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['family']:16} {row['setting']:8} {row['ratio'] or '-':>6} {row['visual_after']:>7} {row['prompt_tokens']:>7} {row['ttft_ms']:>7.1f} "
              f"{row['preprocess_ms']:>7.1f} {row['vit_ms']:>7.1f} {row['other_ms']:>7.1f} {row['prefill_ms']:>7.1f} "
              f"{row['decode_tokens_per_s']:>7.1f} {row['answer_ms']:>8.1f} {row['ttft_speedup']:>7.2f} "
              f"{row['answer_speedup']:>8.2f} {row['peak_memory_gib']:>8.2f}")
    print("\nTTFT: call start to the first token (preprocessing included); other: projector, pooling, Tango, splicing;")
    print("tok/s: tokens (the first included) over the call's time after the first token; answer: the whole call.")
    print("\nchecks:", json.dumps(verified, indent=1))
    save(args.json, rows, verified)


def save(path, rows, verified) -> None:
    """The JSON so far (written after every setting: a run cut short keeps what it measured)."""
    if path:
        path.write_text(json.dumps({"rows": rows, "checks": verified, "gpu": torch.cuda.get_device_name(),
                                    "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}, indent=1))


if __name__ == "__main__":
    main()

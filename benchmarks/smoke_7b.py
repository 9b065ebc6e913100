"""GPU smoke test at full 7B size: the three families with random weights, vanilla vs Tango.

Usage: python benchmarks/smoke_7b.py [--families llava_onevision,llava_video,qwen2_5_vl] [--json out.json]

Random weights time exactly like real ones (same shapes, same kernels), so this measures the
real costs: visual tokens entering the LLM, per-stage times, time to first token and peak
memory. The tokenizers are the tiny test tokenizers (text content is irrelevant here) and the
video is a generated 360x640 clip with moving objects (frames given as an array: no decoding).
Configurations follow the paper's runs (spec section 7): LLaVA-OneVision 32 frames r = 0.1 fp16;
LLaVA-Video 64 frames, pre-LLM r = 0.121739 (nominal 0.1, tau 0.65) plus the intra-LLM stage
(K = 18, p = 0.5) fp16; Qwen2.5-VL 32 frames r = 0.1 bf16. Needs CUDA.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tango_core.models.llava import LlavaTango  # noqa: E402
from tango_core.models.presets import paper_config  # noqa: E402
from tango_core.models.qwen2_5_vl import Qwen25VLTango  # noqa: E402
from tango_core.testing.tiny_llava import build_tiny_tokenizer, build_word_tokenizer, random_llava_7b, random_siglip_head  # noqa: E402
from tango_core.testing.tiny_qwen import build_tiny_qwen25vl, random_qwen25vl_7b, special_token_ids  # noqa: E402

FAMILIES = ("llava_onevision", "llava_video", "qwen2_5_vl")
QUESTION = "What happens in the video?\n(A) a ball rolls\n(B) nothing\n(C) a car turns\n(D) it rains\nAnswer with the option's letter."


def moving_objects_video(num_frames: int, height: int = 360, width: int = 640, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8: a smooth background, two moving discs, a cut in the middle, mild noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        scene = 0 if t < num_frames // 2 else 1
        base = 90 + 60 * np.sin(xs / (70 + 40 * scene) + scene) * np.cos(ys / 90)
        image = np.stack([base, base * 0.8 + 30 * scene, 200 - base * 0.5], axis=-1)
        for k, colour in enumerate(([230, 40, 40], [40, 220, 90])):
            cx = (100 + 14 * t * (k + 1)) % width
            cy = height / 2 + (k - 0.5) * 120
            disc = (xs - cx) ** 2 + (ys - cy) ** 2 < 40**2
            image[disc] = colour
        image += rng.normal(0, 3, image.shape)
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames


def build(family: str, workdir: Path, tokenizer: str = "tiny"):
    """(model, tokenizer, saliency head or None, dtype) for one family at 7B size on CUDA.

    tokenizer (LLaVA): ``"tiny"``, the test tokenizer (it spells most words out in pieces: about
    120 tokens for ``QUESTION`` and the template where Qwen2's tokenizer gives about 55), or
    ``"word"``, :func:`~tango_core.testing.tiny_llava.build_word_tokenizer` (Qwen2's split, whole
    words: Qwen2's token counts). Qwen2.5-VL keeps its tiny checkpoint's tokenizer either way.
    """
    if family == "qwen2_5_vl":
        from transformers import AutoTokenizer

        tiny = build_tiny_qwen25vl(str(workdir / "tiny_qwen"))
        tokenizer = AutoTokenizer.from_pretrained(tiny)
        model = random_qwen25vl_7b(device="cuda", dtype=torch.bfloat16, token_ids=special_token_ids(tokenizer))
        return model, tokenizer, None, torch.bfloat16
    if tokenizer not in ("tiny", "word"):
        raise ValueError(f"tokenizer must be 'tiny' or 'word', got {tokenizer!r}.")
    tokenizer = build_tiny_tokenizer() if tokenizer == "tiny" else build_word_tokenizer([QUESTION])
    model = random_llava_7b(family, device="cuda", dtype=torch.float16, attn_implementation="sdpa")
    model.config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    model.config.video_token_id = tokenizer.convert_tokens_to_ids("<video>")
    return model, tokenizer, random_siglip_head(device="cuda", dtype=torch.float16), torch.float16


def adapter(family: str, model, tokenizer, head, tango):
    if family == "qwen2_5_vl":
        return Qwen25VLTango(model, tokenizer, tango)
    frames = 64 if family == "llava_video" else 32
    return LlavaTango(model, tokenizer, tango=tango, family=family, num_frames=frames, saliency_head=head)


def measure(runner, video: np.ndarray, repeats: int) -> dict:
    runner.generate(video, QUESTION, max_new_tokens=4)  # warm-up
    records = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out = runner.generate(video, QUESTION, max_new_tokens=8)
        torch.cuda.synchronize()
        stats = out.stats
        times = dict(stats.times_ms)
        records.append(
            {
                "times_ms": times,
                "ttft_ms": stats.first_token_ms,  # wall clock: call start to the first token on the host
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                "visual_before": stats.visual_tokens_before,
                "visual_after": stats.visual_tokens_after,
                "visual_after_intra_llm": stats.visual_tokens_after_intra_llm,
                "new_tokens": int(out.token_ids.numel()),
            }
        )
    keys = sorted({k for r in records for k in r["times_ms"]})
    return {
        "visual_before": records[-1]["visual_before"],
        "visual_after": records[-1]["visual_after"],
        "visual_after_intra_llm": records[-1]["visual_after_intra_llm"],
        "median_ms": {k: statistics.median(r["times_ms"].get(k, 0.0) for r in records) for k in keys},
        "ttft_ms": statistics.median(r["ttft_ms"] for r in records),
        "peak_gib": max(r["peak_gib"] for r in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("smoke_7b.py needs a CUDA GPU.")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            model, tokenizer, head, dtype = build(family, Path(tmp))
            video = moving_objects_video(64 if family == "llava_video" else 32)
            for label, tango in (("vanilla", None), ("tango", paper_config(family, 0.1))):
                result = measure(adapter(family, model, tokenizer, head, tango), video, args.repeats)
                result.update(family=family, setting=label, dtype=str(dtype).replace("torch.", ""),
                              ratio=None if tango is None else tango.retention_ratio)
                rows.append(result)
                print(f"done {family} {label}: {result}", file=sys.stderr, flush=True)
            del model, head
            gc.collect()
            torch.cuda.empty_cache()

    print(f"\n7B random-weight smoke test, {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("Stage times are CUDA-event spans (base.StageTimer); 'other' = project + prune + splice; TTFT is wall clock.\n")
    header = (f"{'family':16} {'setting':8} {'ratio':>8} {'visual in':>9} {'to LLM':>7} {'after K':>7} "
              f"{'load':>7} {'preproc':>7} {'vit':>7} {'other':>7} {'prune':>7} {'prefill':>8} {'TTFT':>8} {'decode':>8} {'peak GiB':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        t = row["median_ms"]
        other = sum(t.get(k, 0.0) for k in ("project", "prune", "splice"))
        print(
            f"{row['family']:16} {row['setting']:8} {row['ratio'] if row['ratio'] else '-':>8} {row['visual_before']:>9} "
            f"{row['visual_after']:>7} {row['visual_after_intra_llm'] or '-':>7} {t.get('load', 0):>7.1f} "
            f"{t.get('preprocess', 0):>7.1f} {t.get('vit', 0):>7.1f} {other:>7.1f} {t.get('prune', 0):>7.1f} "
            f"{t.get('prefill', 0):>8.1f} {row['ttft_ms']:>8.1f} {t.get('decode', 0):>8.1f} {row['peak_gib']:>8.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

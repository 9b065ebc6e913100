"""Demo sweep: Tango at r = 0.1 / 0.15 / 0.2 on tiny random-weight models and generated videos.

THIS IS A DEMO, NOT A PAPER RESULT. The three model families are tiny versions built from configs
with seeded random weights, and the "benchmark" is a handful of generated videos of moving
coloured squares with multiple-choice questions. Accuracies are those of random models; what the
demo shows is the machinery: loading through ``load_tango_model``, frame sampling, saliency,
pruning, generation, per-stage timings, answer extraction, a resumable sweep and the table.

Usage: python scripts/demo.py [--out outputs/demo] [--ratios 0.1,0.15,0.2] [--fresh]
Results are appended to OUT/results.jsonl as they come; an interrupted run resumes from there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tango_core import TangoConfig, tango_prune  # noqa: E402
from tango_core.models.loader import load_tango_model  # noqa: E402
from tango_core.models.presets import paper_config  # noqa: E402
from tango_core.models.tiny_llava import save_tiny_llava  # noqa: E402
from tango_core.models.tiny_qwen import build_tiny_qwen25vl  # noqa: E402
from tango_core.models.video import write_video  # noqa: E402
from tango_core.synthetic import structured_clip  # noqa: E402

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
DIRECTIONS = ["left", "right", "up", "down"]


def moving_square(colour: str, direction: str, num_frames: int = 48, size: int = 64) -> np.ndarray:
    """(T, size, size, 3) uint8: a square of ``colour`` moving ``direction`` over a slowly shading background."""
    step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t] = 90 + t
        x = size // 2 - 6 + step[0] * (t * (size // 2 - 8)) // num_frames
        y = size // 2 - 6 + step[1] * (t * (size // 2 - 8)) // num_frames
        frames[t, y : y + 12, x : x + 12] = COLOURS[colour]
    return frames


def build_benchmark(directory: Path) -> List[Dict]:
    """Eight generated videos, each with a 4-way multiple-choice question about its motion."""
    directory.mkdir(parents=True, exist_ok=True)
    items = []
    for index, (colour, direction) in enumerate(
        [(c, d) for c, d in zip(list(COLOURS) * 2, DIRECTIONS + DIRECTIONS[::-1])]
    ):
        path = directory / f"video_{index}.mp4"
        if not path.exists():
            write_video(str(path), moving_square(colour, direction), fps=8)
        options = "\n".join(f"({letter}) {d}" for letter, d in zip("ABCD", DIRECTIONS))
        question = f"Which way does the {colour} square move?\n{options}\nAnswer with the option's letter."
        items.append({"id": index, "video": str(path), "question": question, "answer": "ABCD"[DIRECTIONS.index(direction)]})
    return items


def extract_letter(text: str) -> str:
    """The first stand-alone option letter A-D in a model's answer ('' if none)."""
    match = re.search(r"\b([A-D])\b", text)
    return match.group(1) if match else ""


def build_models(directory: Path) -> Dict[str, str]:
    """Tiny checkpoints of the three families, written once and reused."""
    paths = {}
    for family in ("llava_onevision", "llava_video"):
        target = directory / family
        if not (target / "config.json").exists():
            save_tiny_llava(str(target), family=family, seed=0)
        paths[family] = str(target)
    target = directory / "qwen2_5_vl"
    if not (target / "config.json").exists():
        build_tiny_qwen25vl(str(target), seed=0)
    paths["qwen2_5_vl"] = str(target)
    return paths


def run_sweep(out: Path, ratios: List[float], frames: Dict[str, int]) -> List[Dict]:
    results_path = out / "results.jsonl"
    done = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line torn by an interruption: recompute it
                continue
            done[(row["model"], row["ratio"], row["item"])] = row
    items = build_benchmark(out / "videos")
    models = build_models(out / "models")
    settings = [None] + ratios
    jobs = [(m, r, it) for m in models for r in settings for it in items if (m, r, it["id"]) not in done]
    if done:
        print(f"[demo] resuming: {len(done)} answers already in {results_path}, {len(jobs)} to go")
    loaded = {}
    with results_path.open("a") as sink:
        if results_path.stat().st_size and not results_path.read_bytes().endswith(b"\n"):
            sink.write("\n")  # end a line torn by an interruption
        for model_name, ratio, item in tqdm(jobs, desc="demo sweep", unit="answer"):
            key = (model_name, ratio)
            if key not in loaded:
                loaded.clear()
                tango = None if ratio is None else paper_config(model_name, ratio)
                extra = {"num_frames": frames[model_name]} if model_name != "qwen2_5_vl" else {}
                loaded[key] = load_tango_model(models[model_name], tango=tango, dtype=torch.float32, device="cpu", **extra)
            start = time.perf_counter()
            generation = loaded[key].generate(item["video"], item["question"], max_new_tokens=4)
            row = {
                "model": model_name,
                "ratio": ratio,
                "item": item["id"],
                "answer": generation.text,
                "correct": extract_letter(generation.text) == item["answer"],
                "visual_before": generation.stats.visual_tokens_before,
                "visual_after": generation.stats.visual_tokens_after,
                "visual_after_intra_llm": generation.stats.visual_tokens_after_intra_llm,
                "times_ms": generation.stats.times_ms,
                "wall_ms": 1e3 * (time.perf_counter() - start),
            }
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            done[(model_name, ratio, item["id"])] = row
    return list(done.values())


def print_table(rows: List[Dict]) -> None:
    print("\nDEMO ONLY: tiny random-weight models on 8 generated videos (accuracy is chance level)\n")
    print("'to LLM' counts the visual embeddings the LLM reads (LLaVA newline embeddings included);")
    print("'after K': LLaVA-Video's visual tokens in the layers after its intra-LLM stage.\n")
    header = (f"{'model':16} {'ratio':>7} {'visual in':>9} {'to LLM':>7} {'after K':>7} {'to LLM %':>8} "
              f"{'prefill ms':>10} {'acc %':>6}")
    print(header)
    print("-" * len(header))
    groups: Dict = {}
    for row in rows:
        groups.setdefault((row["model"], row["ratio"]), []).append(row)
    for (model, ratio), group in sorted(groups.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])):
        before = np.mean([r["visual_before"] for r in group])
        after = np.mean([r["visual_after"] for r in group])
        intra = [r["visual_after_intra_llm"] for r in group if r["visual_after_intra_llm"] is not None]
        intra_text = f"{np.mean(intra):.0f}" if intra else "-"
        prefill = np.mean([r["times_ms"].get("prefill", float("nan")) for r in group])
        accuracy = 100 * np.mean([r["correct"] for r in group])
        label = "vanilla" if ratio is None else f"{ratio:g}"
        print(f"{model:16} {label:>7} {before:>9.0f} {after:>7.0f} {intra_text:>7} {100 * after / before:>7.1f}% "
              f"{prefill:>10.1f} {accuracy:>6.1f}")


def print_algorithm_table(ratios: List[float]) -> None:
    """tango_prune alone on structured synthetic clips at the LLaVA-OneVision token layout."""
    print("\ntango_prune on structured synthetic clips (32 frames x 14x14 tokens, D=256, CPU)\n")
    print(f"{'regime':8} {'ratio':>6} {'segments':>8} {'kept':>6} {'kept %':>7} {'exact-budget kept':>18} {'ms':>7}")
    for regime in ("static", "mixed", "dynamic"):
        clip = structured_clip(32, (14, 14), 256, regime, num_scenes=3, seed=0)
        for ratio in ratios:
            start = time.perf_counter()
            result = tango_prune(clip.features, clip.saliency, clip.grid, clip.timestamps, TangoConfig(ratio))
            elapsed = 1e3 * (time.perf_counter() - start)
            exact = tango_prune(
                clip.features, clip.saliency, clip.grid, clip.timestamps, TangoConfig(ratio, exact_budget=True)
            )
            kept = result.keep_index.numel()
            print(
                f"{regime:8} {ratio:>6g} {len(result.segments):>8} {kept:>6} {100 * kept / (32 * 196):>6.2f}% "
                f"{exact.keep_index.numel():>18} {elapsed:>7.1f}"
            )


def save_kept_tokens_picture(out: Path, ratio: float = 0.2) -> Path:
    """A PNG of the tokens the tiny LLaVA-OneVision keeps on the first demo video."""
    import matplotlib

    matplotlib.use("Agg")
    from tango_core.visualize import plot_kept_tokens

    video = build_benchmark(out / "videos")[0]
    model = load_tango_model(build_models(out / "models")["llava_onevision"], tango=paper_config("llava_onevision", ratio),
                             dtype=torch.float32, device="cpu", num_frames=16)
    inputs = model.prepare_inputs(video["video"], video["question"])
    figure = plot_kept_tokens(inputs.clip.frames, inputs.keep_index, inputs.grid, inputs.stats.segments, max_frames=16,
                              title=f"DEMO (tiny random model): tokens kept at r = {ratio} on {Path(video['video']).name}")
    path = out / "kept_tokens.png"
    figure.savefig(path, dpi=120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Tango demo sweep on tiny models (not paper numbers).")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--ratios", default="0.1,0.15,0.2")
    parser.add_argument("--fresh", action="store_true", help="discard earlier results instead of resuming")
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.fresh and (args.out / "results.jsonl").exists():
        (args.out / "results.jsonl").unlink()
    torch.manual_seed(0)
    print_algorithm_table(ratios)
    rows = run_sweep(args.out, ratios, frames={"llava_onevision": 16, "llava_video": 16})
    print_table(rows)
    print(f"\n[demo] per-answer records: {args.out / 'results.jsonl'}")
    print(f"[demo] picture of the kept tokens: {save_kept_tokens_picture(args.out)}")


if __name__ == "__main__":
    main()

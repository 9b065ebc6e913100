"""The algorithm on its own: ``tango_prune`` on structured synthetic clips, and a picture.

Usage: python scripts/demo.py [--out outputs/pruning_demo] [--ratios 0.1,0.15,0.2]

Prints, per regime (mostly static, mixed, very dynamic clips at the LLaVA-OneVision token layout)
and ratio, the segments found, the tokens kept (faithful and exact-budget modes) and the time; and
draws ``OUT/kept_tokens.png``: the frames with the token cells a tiny random-weight
LLaVA-OneVision keeps. The benchmark sweep is ``bash run_eval_ov.sh --demo`` (scripts/demo.sh).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tango_core import TangoConfig, tango_prune  # noqa: E402
from tango_core.models.loader import load_tango_model  # noqa: E402
from tango_core.models.presets import paper_config  # noqa: E402
from tango_core.testing.tiny_llava import save_tiny_llava  # noqa: E402
from tango_core.testing.synthetic import structured_clip  # noqa: E402

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
    """A PNG of the tokens a tiny random-weight LLaVA-OneVision keeps on a generated clip."""
    import matplotlib

    matplotlib.use("Agg")
    from tango_core.visualize import plot_kept_tokens

    checkpoint = out / "tiny_llava_onevision"
    if not (checkpoint / "config.json").exists():
        save_tiny_llava(str(checkpoint), family="llava_onevision", seed=0)
    model = load_tango_model(str(checkpoint), tango=paper_config("llava_onevision", ratio),
                             dtype=torch.float32, device="cpu", num_frames=16)
    frames = moving_square("red", "right")
    inputs = model.prepare_inputs(frames, "Which way does the red square move?")
    figure = plot_kept_tokens(inputs.clip.frames, inputs.keep_index, inputs.grid, inputs.stats.segments, max_frames=16,
                              title=f"DEMO (tiny random model): tokens kept at r = {ratio} on a moving square")
    path = out / "kept_tokens.png"
    figure.savefig(path, dpi=120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="tango_prune on synthetic clips, and a picture of what it keeps.")
    parser.add_argument("--out", type=Path, default=Path("outputs/pruning_demo"))
    parser.add_argument("--ratios", default="0.1,0.15,0.2")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    print_algorithm_table([float(r) for r in args.ratios.split(",")])
    print(f"\n[demo] picture of the kept tokens: {save_kept_tokens_picture(args.out)}")


if __name__ == "__main__":
    main()

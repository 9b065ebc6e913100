"""Write a 7B-architecture checkpoint with random weights, loadable like the real one.

Usage: python benchmarks/save_random_7b.py --family llava_onevision --out /tmp/ov7b [--device cuda]

Random weights time exactly like the released ones (same shapes, same kernels), so evaluations
of these checkpoints through ``VLMEvalKit/run.py --model-path`` or the sweep scripts measure the
real wall time and GPU time of a run. The tokenizer is the tiny test tokenizer (answers are noise
anyway); LLaVA checkpoints get a random SigLIP so400m ``post_layernorm`` + attention-pooling head in
``<out>/siglip`` (named by the config's ``tango_siglip`` key, as the loader expects).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tango_core.testing.tiny_llava import build_tiny_tokenizer, random_llava_7b, random_siglip_head, siglip_so400m_head_config  # noqa: E402
from tango_core.testing.tiny_qwen import build_tiny_qwen25vl, random_qwen25vl_7b, special_token_ids  # noqa: E402

FAMILIES = ("llava_onevision", "llava_video", "qwen2_5_vl")


def save_siglip_head(directory: Path, device: str, dtype: torch.dtype) -> None:
    """A SigLIP-format checkpoint holding only ``post_layernorm`` and ``head`` (what saliency reads)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    head = random_siglip_head(device=device, dtype=dtype)
    save_file({k: v.contiguous().cpu() for k, v in head.state_dict().items()}, str(directory / "model.safetensors"))
    siglip_so400m_head_config().save_pretrained(str(directory))


def save_random_checkpoint(family: str, out: Path, device: str = "cuda") -> Path:
    """Build the family's 7B model with random weights on ``device`` and save it to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if family == "qwen2_5_vl":
        from transformers import AutoTokenizer

        tiny = build_tiny_qwen25vl(str(out))  # tokenizer, chat template, processor files
        tokenizer = AutoTokenizer.from_pretrained(tiny)
        model = random_qwen25vl_7b(device=device, dtype=torch.bfloat16, token_ids=special_token_ids(tokenizer))
        model.save_pretrained(str(out))
        return out
    tokenizer = build_tiny_tokenizer()
    model = random_llava_7b(family, device=device, dtype=torch.float16)
    model.config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    model.config.video_token_id = tokenizer.convert_tokens_to_ids("<video>")
    model.config.tango_siglip = "siglip"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    save_siglip_head(out / "siglip", device, torch.float16)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    start = time.perf_counter()
    path = save_random_checkpoint(args.family, args.out, args.device)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**30
    print(json.dumps({"family": args.family, "checkpoint": str(path), "GiB": round(size, 2),
                      "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()

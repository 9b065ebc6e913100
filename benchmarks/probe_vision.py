"""What is left of LLaVA's time to first token: SigLIP's attention kernels, its kernel mix, the
intra-LLM prefill and the frame upload, measured on the GPU (issue 10, third pass).

Usage (GPU): python benchmarks/probe_vision.py [--json out.json] [--parts gemm,upload,siglip,prefill]

* siglip: the SigLIP tower (26 layers, 32 and 64 frames) with each of PyTorch's attention
  backends forced (flash, memory-efficient, cuDNN), against the default choice: time and the
  largest difference of the hidden states;
* siglip also: one tower call (32 frames) under the torch profiler: kernel time by kind (products,
  attention, the rest) against the call's wall time;
* gemm: the tower's products alone (q, k, v apart and as one product; out; fc1; fc2) at 32 frames;
* siglip also: LLaVA-Video's intra-LLM prefill (the default static cache) eager, and its kernel time;
* prefill: OneVision's prefill of the pruned prompt, graphed and eager: time and kernels;
* upload: 32 frames of 360x640 uint8 to the GPU from pageable and from pinned memory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_ttft import record, run_parts, timed  # noqa: E402
from smoke_7b import QUESTION, build, moving_objects_video  # noqa: E402

from tango_core.models.llava import LlavaTango  # noqa: E402
from tango_core.models.presets import paper_config  # noqa: E402

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


def kernel_kinds(fn) -> dict:
    """Device milliseconds of one ``fn()`` by kernel kind (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kinds = {"products": 0.0, "attention": 0.0, "other": 0.0}
    top = []
    for event in prof.key_averages():
        us = float(getattr(event, "self_device_time_total", 0.0) or getattr(event, "self_cuda_time_total", 0.0))
        if us <= 0:
            continue
        name = event.key.lower()
        if any(s in name for s in ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90")) and "flash" not in name:
            kind = "products"
        elif any(s in name for s in ("flash", "fmha", "cudnn", "attention", "attn")):
            kind = "attention"
        else:
            kind = "other"
        kinds[kind] += us / 1e3
        top.append((us / 1e3, event.key[:90], kind))
    top.sort(reverse=True)
    return {"ms_by_kind": {k: round(v, 2) for k, v in kinds.items()}, "top": [(round(t, 2), n, k) for t, n, k in top[:12]]}


def probe_siglip(tmp: Path) -> None:
    model, tokenizer, head, _ = build("llava_video", tmp)
    runner = LlavaTango(model, tokenizer, tango=paper_config("llava_video", 0.1), family="llava_video", num_frames=64, saliency_head=head)
    frames = runner.load_clip(moving_objects_video(64)).frames
    with torch.inference_mode():
        for count in (32, 64):
            pixels = runner.preprocess(frames[:count])
            reference = runner.vision_hidden_states(pixels)
            record(f"siglip_{count}f_default_ms", round(timed(lambda: runner.vision_hidden_states(pixels)), 2))
            for name, backend in BACKENDS.items():
                try:
                    with sdpa_kernel([backend]):
                        out = runner.vision_hidden_states(pixels)
                        record(f"siglip_{count}f_{name}_ms", round(timed(lambda: runner.vision_hidden_states(pixels)), 2))
                    record(f"siglip_{count}f_{name}_max_abs_diff", float((out.float() - reference.float()).abs().max()))
                except Exception as error:  # noqa: BLE001 - a backend this GPU lacks is a result too
                    record(f"siglip_{count}f_{name}_failed", repr(error)[:300])
            q = torch.randn(count, 16, 729, 72, device="cuda", dtype=torch.float16)
            for name, backend in BACKENDS.items():
                try:
                    with sdpa_kernel([backend]):
                        record(f"attention_op_{count}f_{name}_ms",
                               round(timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)), 3))
                except Exception as error:  # noqa: BLE001
                    record(f"attention_op_{count}f_{name}_failed", repr(error)[:300])
            if count == 32:
                record("siglip_32f_kernels_default", kernel_kinds(lambda: runner.vision_hidden_states(pixels)))
                try:
                    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                        record("siglip_32f_kernels_cudnn", kernel_kinds(lambda: runner.vision_hidden_states(pixels)))
                except Exception as error:  # noqa: BLE001
                    record("siglip_32f_kernels_cudnn_failed", repr(error)[:300])
        probe_intra(runner)
    del model, head
    torch.cuda.empty_cache()


def probe_gemm() -> None:
    tokens, width, inner = 32 * 729, 1152, 4304
    x = torch.randn(tokens, width, device="cuda", dtype=torch.float16)
    h = torch.randn(tokens, inner, device="cuda", dtype=torch.float16)
    square = torch.randn(width, width, device="cuda", dtype=torch.float16)
    fused = torch.randn(3 * width, width, device="cuda", dtype=torch.float16)
    up = torch.randn(inner, width, device="cuda", dtype=torch.float16)
    down = torch.randn(width, inner, device="cuda", dtype=torch.float16)
    bias1, bias3 = torch.zeros(width, device="cuda", dtype=torch.float16), torch.zeros(3 * width, device="cuda", dtype=torch.float16)
    bias_up = torch.zeros(inner, device="cuda", dtype=torch.float16)
    linear = torch.nn.functional.linear
    parts = {
        "qkv_apart": lambda: [linear(x, square, bias1) for _ in range(3)],
        "qkv_fused": lambda: linear(x, fused, bias3),
        "out": lambda: linear(x, square, bias1),
        "fc1": lambda: linear(x, up, bias_up),
        "fc2": lambda: linear(h, down, bias1),
    }
    flops = {"qkv_apart": 3 * width * width, "qkv_fused": 3 * width * width, "out": width * width, "fc1": width * inner, "fc2": width * inner}
    total = 0.0
    for name, fn in parts.items():
        ms = timed(fn, repeats=20)
        record(f"gemm_32f_{name}_ms", round(ms, 3))
        record(f"gemm_32f_{name}_tflops", round(2 * tokens * flops[name] / ms / 1e9, 1))
        if name != "qkv_fused":
            total += ms
    record("gemm_32f_per_layer_ms", round(total, 3))
    record("gemm_32f_26_layers_ms", round(26 * total, 2))


def probe_intra(runner: LlavaTango) -> None:
    runner.stop_token_ids = []
    prefill = runner.prepare(moving_objects_video(64), QUESTION)
    prefill.max_new_tokens = 32
    record("intra_prompt_length", int(prefill.inputs_embeds.shape[1]))
    record("intra_prefill_eager_ms", round(timed(lambda: runner.start(prefill)), 2))
    record("intra_prefill_kernels", kernel_kinds(lambda: runner.start(prefill)))


def probe_prefill(tmp: Path) -> None:
    """OneVision's graphed prefill of the pruned prompt (word tokenizer): time and kernels."""
    model, tokenizer, head, _ = build("llava_onevision", tmp, tokenizer="word")
    runner = LlavaTango(model, tokenizer, tango=paper_config("llava_onevision", 0.1), family="llava_onevision", num_frames=32, saliency_head=head)
    runner.stop_token_ids = []
    with torch.inference_mode():
        prefill = runner.prepare(moving_objects_video(32), QUESTION)
        prefill.max_new_tokens = 32
        record("prefill_prompt_length", int(prefill.inputs_embeds.shape[1]))
        record("prefill_graphed_ms", round(timed(lambda: runner.start(prefill)), 2))
        record("prefill_graphed_kernels", kernel_kinds(lambda: runner.start(prefill)))
        runner.decoding, runner._static = "dynamic", None
        record("prefill_eager_dynamic_ms", round(timed(lambda: runner.start(prefill)), 2))
        record("prefill_eager_dynamic_kernels", kernel_kinds(lambda: runner.start(prefill)))
    del model, head
    torch.cuda.empty_cache()


def probe_upload() -> None:
    frames = moving_objects_video(32)
    pageable = torch.from_numpy(frames)
    pinned = pageable.pin_memory()
    record("upload_32f_pageable_ms", round(timed(lambda: pageable.to("cuda")), 3))
    record("upload_32f_pinned_ms", round(timed(lambda: pinned.to("cuda", non_blocking=True)), 3))
    record("copy_to_pinned_32f_ms", round(timed(lambda: pinned.copy_(pageable)), 3))


def main() -> None:
    probes = {"gemm": lambda tmp: probe_gemm(), "upload": lambda tmp: probe_upload(), "siglip": probe_siglip, "prefill": probe_prefill}
    run_parts(__doc__.splitlines()[0], probes, "gemm,upload,siglip")


if __name__ == "__main__":
    main()

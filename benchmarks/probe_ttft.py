"""Where the rest of time to first token can go: measured probes on the GPU (issue 10).

Usage (GPU): python benchmarks/probe_ttft.py [--json out.json] [--parts gemm,siglip,qwen_vit,llm]

Probes, each against the current default path, 7B architectures with random weights:

* gemm: Qwen2.5-VL's ViT MLP products at its width 3420 (not a multiple of 8) and padded to 3456;
* siglip: LLaVA's SigLIP layers eager and each layer ``torch.compile``-d (32 and 64 frames);
* qwen_vit: Qwen2.5-VL's ViT (all windows in one call) eager, with the MLP padded, with the blocks
  compiled;
* llm: prefill of the pruned prompt eager against one CUDA graph of a padded prompt, and a decoding
  step replayed as a CUDA graph with and without ``torch.compile`` under it.

Prints one line per probe and writes them as JSON.
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from smoke_7b import QUESTION, build, moving_objects_video  # noqa: E402

from tango_core.models.llava import LlavaTango  # noqa: E402
from tango_core.models.presets import paper_config  # noqa: E402
from tango_core.models.qwen2_5_vl import Qwen25VLTango  # noqa: E402

RESULTS: dict = {}


def timed(fn, repeats: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` (synchronised before and after each call)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def record(name: str, value) -> None:
    RESULTS[name] = value
    print(f"{name}: {value}", flush=True)


def compile_seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def probe_gemm() -> None:
    m, k = 19136, 1280
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    for width in (3420, 3424, 3456, 3584):
        w = torch.randn(width, k, device="cuda", dtype=torch.bfloat16)
        h = torch.randn(m, width, device="cuda", dtype=torch.bfloat16)
        wd = torch.randn(k, width, device="cuda", dtype=torch.bfloat16)
        up = timed(lambda: torch.nn.functional.linear(x, w), 20)
        down = timed(lambda: torch.nn.functional.linear(h, wd), 20)
        flops = 2 * m * k * width
        record(f"gemm_up_{width}_ms", round(up, 4))
        record(f"gemm_down_{width}_ms", round(down, 4))
        record(f"gemm_up_{width}_tflops", round(flops / up / 1e9, 1))
        record(f"gemm_down_{width}_tflops", round(flops / down / 1e9, 1))


def pad_linear_out(linear: nn.Linear, width: int) -> nn.Linear:
    out = nn.Linear(linear.in_features, width, bias=linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        out.weight.zero_()
        out.weight[: linear.out_features] = linear.weight
        if linear.bias is not None:
            out.bias.zero_()
            out.bias[: linear.out_features] = linear.bias
    return out


def pad_linear_in(linear: nn.Linear, width: int) -> nn.Linear:
    out = nn.Linear(width, linear.out_features, bias=linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        out.weight.zero_()
        out.weight[:, : linear.in_features] = linear.weight
        if linear.bias is not None:
            out.bias.copy_(linear.bias)
    return out


def probe_siglip(tmp: Path) -> None:
    model, tokenizer, head, _ = build("llava_video", tmp)
    pixels = {}
    for frames in (32, 64):
        runner = LlavaTango(model, tokenizer, tango=paper_config("llava_video", 0.1), family="llava_video", num_frames=frames, saliency_head=head)
        pixels[frames] = runner.preprocess(runner.load_clip(moving_objects_video(frames)).frames)
    with torch.inference_mode():
        for frames, batch in pixels.items():
            record(f"siglip_{frames}f_eager_ms", round(timed(lambda: runner.vision_hidden_states(batch)), 2))
            with_head = timed(lambda: head(runner.vision_hidden_states(batch)))
            record(f"siglip_{frames}f_head_ms", round(with_head - RESULTS[f"siglip_{frames}f_eager_ms"], 2))
        for layer in model.model.vision_tower.encoder.layers:
            layer.compile()
        for frames, batch in pixels.items():
            record(f"siglip_{frames}f_compile_s", round(compile_seconds(lambda: runner.vision_hidden_states(batch)), 1))
            record(f"siglip_{frames}f_compiled_ms", round(timed(lambda: runner.vision_hidden_states(batch)), 2))
    del model, head
    torch.cuda.empty_cache()


def probe_qwen_vit(tmp: Path) -> None:
    model, tokenizer, _, _ = build("qwen2_5_vl", tmp)
    runner = Qwen25VLTango(model, tokenizer, paper_config("qwen2_5_vl", 0.1))
    inputs = runner.prepare_inputs(moving_objects_video(32), QUESTION)
    pixels, grid = inputs.pixel_values_videos, inputs.video_grid_thw
    record("qwen_vit_patches", int(pixels.shape[0]))
    with torch.inference_mode():
        reference, _ = runner.encode_video(pixels, grid, True)
        record("qwen_vit_eager_ms", round(timed(lambda: runner.encode_video(pixels, grid, True)), 2))
        record("qwen_vit_eager_no_saliency_ms", round(timed(lambda: runner.encode_video(pixels, grid, False)), 2))
        blocks = model.model.visual.blocks
        width = blocks[0].mlp.gate_proj.out_features
        padded = -(-width // 64) * 64
        for block in blocks:
            block.mlp.gate_proj = pad_linear_out(block.mlp.gate_proj, padded)
            block.mlp.up_proj = pad_linear_out(block.mlp.up_proj, padded)
            block.mlp.down_proj = pad_linear_in(block.mlp.down_proj, padded)
        record("qwen_vit_mlp_width", f"{width} -> {padded}")
        out, _ = runner.encode_video(pixels, grid, True)
        record("qwen_vit_padded_max_abs_diff", float((out.float() - reference.float()).abs().max()))
        record("qwen_vit_padded_ms", round(timed(lambda: runner.encode_video(pixels, grid, True)), 2))
        for block in blocks[:-1]:
            block.compile()
        record("qwen_vit_compile_s", round(compile_seconds(lambda: runner.encode_video(pixels, grid, True)), 1))
        out, _ = runner.encode_video(pixels, grid, True)
        record("qwen_vit_compiled_max_abs_diff", float((out.float() - reference.float()).abs().max()))
        record("qwen_vit_padded_compiled_ms", round(timed(lambda: runner.encode_video(pixels, grid, True)), 2))
        record("dynamo_counters", {k: dict(v) for k, v in torch._dynamo.utils.counters.items() if k in ("stats", "graph_break")})
    llm_probes("qwen2_5_vl", runner, moving_objects_video(32))
    del model
    torch.cuda.empty_cache()


def llm_probes(family: str, runner, video) -> None:
    """Prefill eager vs graphed (padded); decoding steps graphed with and without torch.compile."""
    runner.stop_token_ids = []
    prefill = runner.prepare(video, QUESTION)
    length = prefill.inputs_embeds.shape[1]
    record(f"{family}_prompt_length", int(length))
    prefill.max_new_tokens = 32
    with torch.inference_mode():
        record(f"{family}_prefill_eager_ms", round(timed(lambda: runner.start(prefill)), 2))
        static = runner._static_decoding((3, 1, 1) if family == "qwen2_5_vl" else (1, 1))
        bucket = -(-length // 64) * 64
        cache = static.cache(bucket + 32)
        embeds = torch.zeros((1, bucket, prefill.inputs_embeds.shape[2]), device="cuda", dtype=prefill.inputs_embeds.dtype)
        embeds[:, :length] = prefill.inputs_embeds
        slots = torch.arange(bucket, device="cuda")
        last = torch.tensor([length - 1], device="cuda")
        if family == "qwen2_5_vl":
            positions = torch.zeros((3, 1, bucket), device="cuda", dtype=torch.long)
            positions[:, :, :length] = prefill.position_ids
            positions[:, :, length:] = prefill.position_ids[:, :, -1:] + 1
        else:
            positions = slots[None]
        lm = runner.model.model.language_model

        def body():
            for layer in cache.layers:
                if getattr(layer, "is_initialized", False):
                    layer.cumulative_length.zero_()
            out = lm(inputs_embeds=embeds, past_key_values=cache, cache_position=slots, position_ids=positions, use_cache=True)
            return runner.model.lm_head(out.last_hidden_state.index_select(1, last))

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            expected = body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = body()
        graph.replay()
        eager_logits, _ = runner.start(prefill)
        record(f"{family}_prefill_padded_vs_eager_max_abs", float((captured[:, 0].float() - eager_logits.float()).abs().max()))
        record(f"{family}_prefill_graphed_ms", round(timed(lambda: graph.replay()), 2))

        def answer():
            return runner.decode(prefill, 32)

        total = timed(answer, repeats=5, warmup=2)
        prefill_ms = RESULTS[f"{family}_prefill_eager_ms"]
        record(f"{family}_decode_graphs_ms_per_token", round((total - prefill_ms) / 31, 3))
        runner.decoding, runner._static = "compiled", None
        record(f"{family}_decode_compile_s", round(compile_seconds(answer), 1))
        total = timed(answer, repeats=5, warmup=2)
        record(f"{family}_decode_compiled_graphs_ms_per_token", round((total - prefill_ms) / 31, 3))
        runner.decoding, runner._static = "auto", None


def probe_llm_llava(tmp: Path) -> None:
    model, tokenizer, head, _ = build("llava_onevision", tmp)
    runner = LlavaTango(model, tokenizer, tango=paper_config("llava_onevision", 0.1), family="llava_onevision", num_frames=32, saliency_head=head)
    llm_probes("llava_onevision", runner, moving_objects_video(32))
    del model, head
    torch.cuda.empty_cache()


def run_parts(description: str, probes: dict, default: str) -> None:
    """Parse ``--parts`` and ``--json``, run each named probe (a function of a scratch folder), keep
    going past a failed one (recorded as ``<part>_failed``), write the results after each."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--parts", default=default)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts.split(","):
            try:
                probes[part](Path(tmp))
            except Exception as error:  # noqa: BLE001 - one failed probe must not lose the others
                import traceback

                traceback.print_exc()
                record(f"{part}_failed", repr(error)[:500])
            if args.json:
                args.json.write_text(json.dumps(RESULTS, indent=1))


def main() -> None:
    probes = {"gemm": lambda tmp: probe_gemm(), "siglip": probe_siglip, "qwen_vit": probe_qwen_vit, "llm": probe_llm_llava}
    run_parts(__doc__.splitlines()[0], probes, "gemm,llm,siglip,qwen_vit")


if __name__ == "__main__":
    main()

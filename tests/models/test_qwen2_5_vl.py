"""Qwen2.5-VL adapter: equivalence at r = 1, pruning wiring, positions, decoding, saliency, sampling."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math

import numpy as np
import pytest
import torch

from tango_core import TangoConfig, tango_prune
from tango_core.models.base import StageTimer, VideoClip
from tango_core.models.video import write_video
from tango_core.models.qwen2_5_vl import (
    Qwen25VLTango,
    frame_pixel_bounds,
    patch_timestamps,
    patchify_video,
    qwen_frame_indices,
    qwen_num_frames,
    smart_resize,
)
from tango_core.testing.tiny_qwen import (
    build_tiny_qwen25vl,
    build_tiny_tokenizer,
    qwen25vl_7b_config,
    random_qwen25vl,
    special_token_ids,
    tiny_qwen25vl_config,
)

QUESTION = "What is happening in the video? Answer with the option's letter."
# Small frames: 112x140 px -> 8x10 patches -> 4x5 merged tokens per temporal patch, split into
# 2x3 windows of at most 2x2 merged tokens (window_size 56 px), so window order != LLM order.
SMALL = {"video_min_pixels": 4 * 28 * 28}


def _frames(count: int, seed: int = 0, height: int = 112, width: int = 140) -> np.ndarray:
    """A moving square on a smooth background with noise: (count, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], -1)
    out = []
    for t in range(count):
        frame = base + rng.normal(0, 8, base.shape)
        x0 = 10 + 12 * t
        frame[30:60, x0:x0 + 30] = (250, 30, 30)
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return build_tiny_qwen25vl(str(tmp_path_factory.mktemp("tiny_qwen25vl")), seed=0)


@pytest.fixture(scope="module")
def vanilla(model_dir) -> Qwen25VLTango:
    # Explicitly on the CPU in float32, so the tests behave the same on GPU machines.
    return Qwen25VLTango.from_pretrained(model_dir, tango=None, dtype=torch.float32, device="cpu", **SMALL)


def _with(base: Qwen25VLTango, ratio: float) -> Qwen25VLTango:
    return Qwen25VLTango(base.model, base.tokenizer, TangoConfig(retention_ratio=ratio), chat_template=base.chat_template, **SMALL)


# ---------------------------------------------------------------------------------------------
# Loading


def test_from_pretrained_defaults(model_dir, vanilla):
    default = Qwen25VLTango.from_pretrained(model_dir, tango=None, **SMALL)
    on_gpu = torch.cuda.is_available()
    assert default.device.type == ("cuda" if on_gpu else "cpu")
    assert default.model.dtype == (torch.bfloat16 if on_gpu else torch.float32)
    del default
    assert vanilla.model.config._attn_implementation == "sdpa"
    assert vanilla.model.config.vision_config.fullatt_block_indexes[-1] == len(vanilla.model.model.visual.blocks) - 1
    text = vanilla.tokenizer.decode(vanilla.prepare_inputs(_frames(4), QUESTION).input_ids[0].tolist())
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|video_pad|>")
    assert text.endswith("<|vision_end|>" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------------
# r = 1.0 is the unmodified model


def _unmodified(base: Qwen25VLTango, frames: np.ndarray, max_new_tokens: int):
    """The unmodified transformers model on the processor-equivalent inputs: first logits and
    greedy tokens (its own forward and generate, sampling and penalties off)."""
    inputs = base.prepare_inputs(frames, QUESTION)
    with torch.no_grad():
        logits = base.model(**inputs.model_kwargs(), logits_to_keep=1).logits[0, -1].float()
        sequences = base.model.generate(
            **inputs.model_kwargs(), max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, temperature=None,
            top_p=None, top_k=None, repetition_penalty=1.0, eos_token_id=list(base.eos_token_ids),
            pad_token_id=base.eos_token_ids[0],
        )
    return logits, sequences[0, inputs.input_ids.shape[1]:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_ratio_one_equals_vanilla(model_dir, vanilla, dtype):
    base = vanilla if dtype == torch.float32 else Qwen25VLTango.from_pretrained(model_dir, dtype=dtype, device="cpu", **SMALL)
    full = _with(base, 1.0)
    frames = _frames(8)
    unmodified_logits, unmodified_ids = _unmodified(base, frames, 6)
    ref = base.first_token_logits(frames, QUESTION)
    got = full.first_token_logits(frames, QUESTION)
    assert ref.shape == (base.model.config.text_config.vocab_size,)
    assert torch.equal(ref, unmodified_logits) and torch.equal(got, unmodified_logits)
    gen_ref = base.generate(frames, QUESTION, max_new_tokens=6)
    gen = full.generate(frames, QUESTION, max_new_tokens=6)
    assert torch.equal(gen_ref.token_ids, unmodified_ids) and torch.equal(gen.token_ids, unmodified_ids)
    assert gen_ref.text == gen.text
    assert gen.stats.visual_tokens_before == gen.stats.visual_tokens_after == 4 * 20
    assert {"vit", "prune", "prefill"} <= set(gen.stats.times_ms)
    assert {"vit", "prefill"} <= set(gen_ref.stats.times_ms)


# ---------------------------------------------------------------------------------------------
# Pruning wiring


def _capture_llm_inputs(model):
    seen = {}

    def hook(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()
        seen["position_ids"] = kwargs["position_ids"].detach().clone()

    return seen, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


def test_pruned_llm_input_and_positions(vanilla):
    pruned = _with(vanilla, 0.1)
    frames = _frames(8)
    inputs = pruned.prepare_inputs(frames, QUESTION)
    prefill = pruned.prepare(frames, QUESTION)
    # Tango's own answer on the same inputs.
    result = tango_prune(prefill.features, prefill.saliency, prefill.grid, prefill.timestamps, pruned.tango)
    num_video = prefill.video_positions.numel()
    assert num_video == 80 and prefill.grid == (4, 5)
    assert torch.equal(prefill.keep_index, result.keep_index)
    kept = result.keep_index.numel()
    assert 0 < kept < num_video
    seen, handle = _capture_llm_inputs(pruned.model)
    try:
        pruned.first_token_logits(frames, QUESTION)
    finally:
        handle.remove()
    full_length = inputs.input_ids.shape[1]
    assert seen["embeds"].shape[1] == full_length - num_video + kept
    # Kept tokens carry their original M-RoPE ids; text tokens too.
    full_pos, deltas = pruned.model.model.get_rope_index(
        inputs.input_ids, mm_token_type_ids=inputs.mm_token_type_ids, video_grid_thw=inputs.video_grid_thw,
        second_per_grid_ts=inputs.second_per_grid_ts, attention_mask=inputs.attention_mask,
    )
    keep = torch.ones(full_length, dtype=torch.bool)
    keep[prefill.video_positions] = False
    keep[prefill.video_positions[result.keep_index]] = True
    assert torch.equal(seen["position_ids"], full_pos[:, :, keep])
    assert torch.equal(prefill.rope_deltas, deltas)
    # The LLM receives Tango's features at the kept video slots and the text embeddings elsewhere.
    kept_slots = torch.isin(torch.nonzero(keep).squeeze(1), prefill.video_positions)
    assert torch.equal(seen["embeds"][0, kept_slots], result.kept_features)
    text_ids = inputs.input_ids[0, keep][~kept_slots]
    assert torch.equal(seen["embeds"][0, ~kept_slots], pruned.model.model.get_input_embeddings()(text_ids))
    # Video positions: temporal ids step by tokens_per_second * second_per_grid_ts = 2 * 1.
    video_pos = full_pos[:, 0, prefill.video_positions]
    assert sorted(set(video_pos[0].tolist())) == [video_pos[0, 0].item() + 2 * t for t in range(4)]
    assert torch.allclose(prefill.timestamps, torch.from_numpy(patch_timestamps(np.arange(8.0), 4)))


def test_decoding_after_pruning_matches_recomputation(vanilla):
    pruned = _with(vanilla, 0.1)
    prefill = pruned.prepare(_frames(8, seed=1), QUESTION)
    ids, step_logits = pruned.decode(prefill, 6, keep_logits=True)
    assert ids.numel() >= 2
    embed = pruned.model.model.get_input_embeddings()
    for j in range(ids.numel()):
        embeds = torch.cat([prefill.inputs_embeds, embed(ids[:j]).unsqueeze(0)], dim=1)
        positions = torch.cat([prefill.position_ids, pruned.decode_positions(prefill, 0, j)], dim=2)
        with torch.no_grad():
            out = pruned.model(inputs_embeds=embeds, position_ids=positions,
                               attention_mask=torch.ones(1, embeds.shape[1], dtype=torch.long), use_cache=False)
        logits = out.logits[0, -1].float()
        assert int(logits.argmax()) == int(ids[j])
        assert torch.allclose(logits, step_logits[j], atol=1e-4, rtol=1e-4)
    # The first decode position continues the full (unpruned) sequence.
    assert int(pruned.decode_positions(prefill, 0)[0, 0, 0]) == int(prefill.position_ids.max()) + 1
    generation = pruned.generate(_frames(8, seed=1), QUESTION, max_new_tokens=6)
    assert torch.equal(generation.token_ids, ids)
    assert generation.stats.visual_tokens_after == prefill.keep_index.numel()


# ---------------------------------------------------------------------------------------------
# Saliency


def test_saliency_matches_explicit_computation(vanilla):
    model = vanilla.model
    visual = model.model.visual
    inputs = vanilla.prepare_inputs(_frames(6, seed=2), QUESTION)
    captured = {}

    def pre(module, args, kwargs):
        captured["h"] = args[0].detach().clone()
        captured["rope"] = kwargs["position_embeddings"]

    def post(module, args, kwargs, output):
        captured["out"] = output.detach().clone()

    handles = [visual.blocks[-1].register_forward_pre_hook(pre, with_kwargs=True),
               visual.blocks[-1].register_forward_hook(post, with_kwargs=True)]
    try:
        with torch.no_grad():
            embeds, saliency = vanilla.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, with_saliency=True)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        plain, _ = vanilla.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, with_saliency=False)
    assert torch.equal(plain, embeds)  # the hooks do not change the ViT's output
    grid_t, units = saliency.shape
    assert (grid_t, units) == (3, 20)
    assert torch.allclose(saliency.sum(-1), torch.ones(grid_t), atol=1e-5)
    assert (saliency >= 0).all()

    # Window order -> LLM order, found by matching the merger's rows (independent of window_index).
    with torch.no_grad():
        merged_window = visual.merger(captured["out"])
    distance = torch.cdist(embeds.double(), merged_window.double())
    nearest = distance.topk(2, dim=1, largest=False)
    llm_to_window = nearest.indices[:, 0]
    assert torch.all(nearest.values[:, 0] < 1e-4) and torch.all(nearest.values[:, 1] > 1e-2)
    assert not torch.equal(llm_to_window, torch.arange(llm_to_window.numel()))  # windowing is non-trivial

    block = visual.blocks[-1]
    with torch.no_grad():
        x = block.norm1(captured["h"]).double()
        qkv = x @ block.attn.qkv.weight.double().T + block.attn.qkv.bias.double()
    heads = block.attn.num_heads
    head_dim = qkv.shape[1] // 3 // heads
    qkv = qkv.reshape(-1, 3, heads, head_dim)
    cos, sin = (t.double()[:, None, :] for t in captured["rope"])

    def rotate(v):
        return torch.cat([-v[..., head_dim // 2:], v[..., :head_dim // 2]], dim=-1)

    q = qkv[:, 0] * cos + rotate(qkv[:, 0]) * sin
    k = qkv[:, 1] * cos + rotate(qkv[:, 1]) * sin
    per_t = q.shape[0] // grid_t
    window_sal = torch.zeros(grid_t * units, dtype=torch.float64)
    for t in range(grid_t):
        for head in range(heads):
            q_mean = q[t * per_t:(t + 1) * per_t, head].mean(0)
            scores = []
            for u in range(units):
                start = t * per_t + 4 * u
                k_mean = k[start:start + 4, head].mean(0)
                scores.append(float(q_mean @ k_mean) / math.sqrt(head_dim))
            top = max(scores)
            exps = [math.exp(s - top) for s in scores]
            for u in range(units):
                window_sal[t * units + u] += exps[u] / sum(exps) / heads
    expected = window_sal[llm_to_window].reshape(grid_t, units)
    assert torch.allclose(saliency.double(), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Frames and preprocessing


def test_frame_count_rules():
    assert qwen_num_frames(300, 30.0) == 20  # 10 s at 2 fps
    assert qwen_num_frames(30 * 600, 30.0) == 128  # capped
    assert qwen_num_frames(10, 30.0) == 4  # at least 4 frames
    assert qwen_num_frames(5, 30.0) == 4
    assert qwen_num_frames(3, 30.0) == 2  # floored to even within the video
    assert qwen_num_frames(301, 25.0, num_frames=32) == 32  # a dataset's nframe overrides
    assert qwen_num_frames(21, 25.0, num_frames=32) == 20  # shorter video: rounded down to even
    assert qwen_num_frames(300, 25.0, num_frames=15) == 16  # rounded to the frame factor
    with pytest.raises(ValueError, match="at least 2"):
        qwen_num_frames(1, 25.0)
    with pytest.raises(ValueError, match="no|nothing"):
        qwen_num_frames(0, 25.0)
    assert qwen_frame_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert frame_pixel_bounds(128) == (128 * 28 * 28, 768 * 28 * 28)
    low, high = frame_pixel_bounds(8, min_pixels=1280 * 28 * 28, max_pixels=16384 * 28 * 28)
    assert high == int(1280 * 28 * 28 * 1.05)
    assert smart_resize(360, 640, 28, 128 * 784, 768 * 784) == (364, 644)
    assert smart_resize(1080, 1920, 28, 128 * 784, 768 * 784) == (560, 1008)


def test_patchify_matches_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image = _frames(1, height=56, width=84)[0]
    processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    expected = processor(images=[image], return_tensors="pt")
    frames = torch.from_numpy(np.stack([image, image])).permute(0, 3, 1, 2).float()
    rows, grid = patchify_video(frames, processor.image_mean, processor.image_std)
    assert list(grid) == expected["image_grid_thw"][0].tolist()
    assert torch.allclose(rows, expected["pixel_values"].float(), atol=1e-5)


def test_video_file_sampling_and_timestamps(vanilla, tmp_path):
    pytest.importorskip("av")  # writes the test video (requirements.txt installs it)
    path = write_video(str(tmp_path / "clip.mp4"), _frames(12, seed=3), fps=4)
    clip = vanilla.load_clip(path)
    assert clip.frames.shape == (6, 112, 140, 3)  # 3 s at 2 fps
    assert clip.frame_indices.tolist() == qwen_frame_indices(12, 6).tolist()
    assert np.allclose(clip.timestamps, clip.frame_indices / 4.0)
    assert vanilla.load_clip(path, num_frames=20).frames.shape[0] == 12  # shorter: all 12 (even)
    pruned = _with(vanilla, 0.1)
    pruned.num_frames = 8  # a dataset's fixed frame count
    prefill = pruned.prepare(path, QUESTION)
    pruned.num_frames = None
    times = qwen_frame_indices(12, 8) / 4.0
    assert torch.allclose(prefill.timestamps, torch.from_numpy(np.interp(np.linspace(0, 7, 4), np.arange(8), times)))
    generation = pruned.generate(path, QUESTION, max_new_tokens=3)
    assert generation.stats.num_frames == 6 and generation.token_ids.numel() >= 1
    # A clip with an odd number of frames gets its last frame repeated.
    odd = VideoClip(_frames(3), np.array([0.0, 0.5, 1.0]), np.arange(3), 2.0, 3)
    padded = vanilla.load_clip(odd)
    assert padded.frames.shape[0] == 4 and padded.timestamps.tolist() == [0.0, 0.5, 1.0, 1.0]


def test_bad_videos_raise_clear_errors(vanilla, tmp_path):
    pytest.importorskip("av")  # writes a one-frame video (requirements.txt installs it)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"this is not a video file" * 64)
    with pytest.raises(ValueError, match="(?i)decod|video"):
        vanilla.generate(str(corrupt), QUESTION)
    with pytest.raises(FileNotFoundError):
        vanilla.generate(str(tmp_path / "missing.mp4"), QUESTION)
    with pytest.raises(ValueError, match="zero frames"):
        vanilla.generate(np.zeros((0, 112, 140, 3), dtype=np.uint8), QUESTION)
    with pytest.raises(ValueError, match="zero frames"):
        vanilla.generate([], QUESTION)
    single = write_video(str(tmp_path / "one.mp4"), _frames(1), fps=4)
    with pytest.raises(ValueError, match="at least 2"):
        vanilla.generate(single, QUESTION)


# ---------------------------------------------------------------------------------------------
# Model builders


def test_7b_config_and_random_builder():
    config = qwen25vl_7b_config()
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (3584, 28, 28, 4)
    assert (text.intermediate_size, text.vocab_size, text.rope_parameters["rope_theta"]) == (18944, 152064, 1e6)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (vision.depth, vision.hidden_size, vision.num_heads, vision.out_hidden_size) == (32, 1280, 16, 3584)
    assert (vision.window_size, list(vision.fullatt_block_indexes), vision.intermediate_size) == (112, [7, 15, 23, 31], 3420)
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        meta_model = Qwen2_5_VLForConditionalGeneration._from_config(config)
    assert sum(p.numel() for p in meta_model.parameters()) == 8_292_166_656

    # The device builder, exercised at tiny size on CPU: rotary tables recomputed, model runs.
    tokenizer = build_tiny_tokenizer()
    tiny = tiny_qwen25vl_config(len(tokenizer), special_token_ids(tokenizer))
    model = random_qwen25vl(tiny, device="cpu", dtype=torch.float32, seed=0)
    reference = Qwen2_5_VLForConditionalGeneration(tiny)
    assert torch.equal(model.model.language_model.rotary_emb.inv_freq, reference.model.language_model.rotary_emb.inv_freq)
    assert torch.equal(model.model.visual.rotary_pos_emb.inv_freq, reference.model.visual.rotary_pos_emb.inv_freq)
    adapter = Qwen25VLTango(model, tokenizer, TangoConfig(retention_ratio=0.2), **SMALL)
    assert torch.isfinite(adapter.first_token_logits(_frames(4), QUESTION)).all()


# ---------------------------------------------------------------------------------------------
# All ViT windows in one attention call


def test_batched_window_attention_matches_transformers_loop(model_dir, vanilla, monkeypatch):
    """The ViT with every window in one call (padded batch on CPU) against transformers' own
    per-window sdpa loop: the same video embeddings and saliency to float rounding, the same kept
    tokens, and the same answer."""
    from tango_core.models import vision_attention

    frames = _frames(8, seed=4)
    looped = Qwen25VLTango(vanilla.model, vanilla.tokenizer, TangoConfig(retention_ratio=0.2),
                           chat_template=vanilla.chat_template, vision_attention="transformers", **SMALL)
    batched = Qwen25VLTango(vanilla.model, vanilla.tokenizer, TangoConfig(retention_ratio=0.2),
                            chat_template=vanilla.chat_template, vision_attention="batched", **SMALL)
    calls = []
    original = vision_attention.batched_windows_attention

    def counting(*args, **kwargs):
        calls.append(kwargs["cu_seq_lens_q"].numel() - 1)
        return original(*args, **kwargs)

    inputs = looped.prepare_inputs(frames, QUESTION)
    with torch.no_grad():
        reference, reference_saliency = looped.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, True)
        with monkeypatch.context() as patch:
            patch.setattr(vision_attention, "batched_windows_attention", counting)
            got, got_saliency = batched.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, True)
        vision_attention.register()
    depth = len(vanilla.model.model.visual.blocks)
    assert len(calls) == depth and max(calls) > 1  # one call per block, several windows in it
    assert vanilla.model.model.visual.config._attn_implementation == "sdpa"  # restored after the call
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_saliency, reference_saliency, rtol=1e-5, atol=1e-6)
    assert torch.equal(batched.prepare(frames, QUESTION).keep_index, looped.prepare(frames, QUESTION).keep_index)
    assert torch.equal(batched.generate(frames, QUESTION, max_new_tokens=4).token_ids,
                       looped.generate(frames, QUESTION, max_new_tokens=4).token_ids)
    with pytest.raises(ValueError, match="vision_attention must be one of"):
        Qwen25VLTango(vanilla.model, vanilla.tokenizer, None, chat_template=vanilla.chat_template, vision_attention="flash")


def test_padded_window_attention_is_attention_within_each_window():
    """Independent check: softmax(q k^T) v inside each window, nothing across windows."""
    from tango_core.models.vision_attention import padded_window_attention

    torch.manual_seed(0)
    bounds = torch.tensor([0, 3, 4, 9, 12])
    q, k, v = (torch.randn(12, 2, 8) for _ in range(3))
    got = padded_window_attention(q, k, v, bounds, scale=0.3)
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        scores = torch.einsum("qhd,khd->hqk", q[start:end], k[start:end]) * 0.3
        expected = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[start:end])
        torch.testing.assert_close(got[start:end], expected, rtol=1e-5, atol=1e-6)


def test_vit_index_tables_are_made_once_per_grid(vanilla, monkeypatch):
    """With batched windows the ViT gets its index tables from the adapter's cache: a second call
    on a video of the same grid runs none of transformers' table helpers, and gives the same output."""
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as qwen_module
    import transformers.vision_utils as vision_utils

    frames = _frames(8, seed=6)
    batched = Qwen25VLTango(vanilla.model, vanilla.tokenizer, TangoConfig(retention_ratio=0.2),
                            chat_template=vanilla.chat_template, vision_attention="batched", **SMALL)
    inputs = batched.prepare_inputs(frames, QUESTION)
    with torch.no_grad():
        first, first_saliency = batched.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, True)
    calls = []
    for module in (qwen_module, vision_utils):
        for name in ("get_vision_window_index", "get_vision_position_ids", "get_vision_cu_seqlens"):
            if hasattr(module, name):
                original = getattr(module, name)

                def counting(*args, _original=original, _name=name, **kwargs):
                    kw = kwargs.get("kwargs") or {}
                    if not any(k in kw for k in ("window_index", "position_ids", "cu_seqlens")):
                        calls.append(_name)  # computed, not taken from the precomputed tables
                    return _original(*args, **kwargs)

                monkeypatch.setattr(module, name, counting)
    with torch.no_grad():
        second, second_saliency = batched.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, True)
    assert calls == []
    assert torch.equal(first, second) and torch.equal(first_saliency, second_saliency)
    assert len(batched._vision_table_cache) == 1


@pytest.mark.parametrize("shape", [(4, 112, 140), (6, 90, 200), (2, 300, 56)])
def test_host_grid_is_the_pixel_grid(vanilla, shape):
    """The grid kept on the host (so that nothing waits for the ViT) is the one the pixel rows are
    cut into, in the processor's patches of 14 pixels within its 28-pixel multiples."""
    clip = vanilla.load_clip(_frames(shape[0], height=shape[1], width=shape[2]))
    rows, grid = vanilla.pixel_rows(clip)
    _, grid_thw = vanilla.pixel_values(clip)
    assert tuple(grid_thw[0].tolist()) == grid
    assert rows.shape[0] == grid[0] * grid[1] * grid[2]
    assert grid[0] == -(-shape[0] // 2) and grid[1] % 2 == 0 and grid[2] % 2 == 0


@pytest.mark.parametrize("num_frames, question", [
    (4, "What happens?"),
    (4, "A much longer question about the video, with several clauses, to move the text after it?"),
    (6, "Why?"),
    (2, ""),
])
def test_text_side_prepared_on_the_host_is_transformers_own(vanilla, num_frames, question):
    """prepare_text's ids and M-RoPE ids (made on the host before the ViT's output is read, from a
    per-grid block) are what transformers' get_rope_index gives on the whole prompt."""
    frames = _frames(num_frames)
    inputs = vanilla.prepare_inputs(frames, question)
    visual = vanilla.encode(vanilla.load_clip(frames), with_saliency=False, timer=StageTimer(vanilla.device))
    for _ in range(2):  # the second call reads the cached block
        text = vanilla.prepare_text(question, vanilla.load_clip(frames), visual)
        assert torch.equal(text.input_ids, inputs.input_ids)
        expected, deltas = vanilla.model.model.get_rope_index(
            inputs.input_ids, mm_token_type_ids=inputs.mm_token_type_ids, video_grid_thw=inputs.video_grid_thw,
            second_per_grid_ts=inputs.second_per_grid_ts, attention_mask=inputs.attention_mask,
        )
        assert torch.equal(text.position_ids, expected) and torch.equal(text.rope_deltas, deltas)
        assert text.visual_start == int((inputs.input_ids[0] == vanilla.video_token_id).nonzero()[0])
        assert text.first_new_position == int(expected.max()) + 1


def test_splice_refuses_a_prompt_of_another_video(vanilla):
    timer = StageTimer(vanilla.device)
    small = vanilla.load_clip(_frames(4))
    large = vanilla.load_clip(_frames(8))
    visual = vanilla.encode(large, with_saliency=False, timer=timer)
    text = vanilla.prepare_text("What happens?", small, vanilla.encode(small, with_saliency=False, timer=timer))
    kept = vanilla.prune(visual)
    with pytest.raises(ValueError, match="video tokens but the ViT gave"):
        vanilla.splice("What happens?", visual, kept, large, text)

"""LLaVA-OneVision / LLaVA-Video adapters on tiny random checkpoints (CPU, offline)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
av = pytest.importorskip("av")

from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb  # noqa: E402

from tango_core import TangoConfig, tango_prune  # noqa: E402
from tango_core.intra_llm import IntraLLMConfig  # noqa: E402
from tango_core.models.llava import LlavaInputs, LlavaTango  # noqa: E402
from tango_core.models.loader import load_tango_model  # noqa: E402
from tango_core.testing.tiny_llava import save_tiny_llava  # noqa: E402
from tango_core.models.video import write_video  # noqa: E402

NUM_FRAMES = 4
QUESTION = "What is the person doing in the video?"
INTRA_K = 2  # of 4 tiny layers (18 of 28 on the 7B model)


def structured_frames(num_frames: int = 8, size: int = 60, seed: int = 0) -> np.ndarray:
    """(T, size, size, 3) uint8: a smooth background, a bright square moving right, some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    background = np.stack([100 + 60 * np.sin(xx / 9.0), 120 + 50 * np.cos(yy / 7.0), 90 + 0 * xx], -1)
    frames = []
    for t in range(num_frames):
        frame = background + rng.normal(0, 6, background.shape)
        x0 = 4 + 6 * t
        frame[20:34, x0 : x0 + 14] = (250, 30, 30)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(frames)


FRAMES = structured_frames()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_llava")
    return {family: save_tiny_llava(str(root / family), family).model for family in ("llava_onevision", "llava_video")}


def load(checkpoints: Dict[str, str], family: str, tango=None, **kw) -> LlavaTango:
    return load_tango_model(checkpoints[family], tango=tango, dtype=torch.float32, device="cpu", num_frames=NUM_FRAMES, **kw)


def share(base: LlavaTango, tango, **kw) -> LlavaTango:
    """Another adapter over the same weights (saves loading time)."""
    return LlavaTango(
        base.model, base.tokenizer, tango=tango, family=base.family, num_frames=base.num_frames,
        saliency_head=base._get_saliency_head(), **kw,
    )


@pytest.fixture(scope="module")
def onevision(checkpoints) -> LlavaTango:
    return load(checkpoints, "llava_onevision")


# LLaVA-Video's intra-LLM stage builds its own masks: eager attention takes them as they are,
# sdpa may drop a causal one (is_causal), so mask mistakes show only under eager.
@pytest.fixture(scope="module", params=["sdpa", "eager"])
def llava_video(checkpoints, request) -> LlavaTango:
    adapter = load(checkpoints, "llava_video", intra_llm=IntraLLMConfig(layer=INTRA_K), attn_implementation=request.param)
    assert adapter.model.config.text_config._attn_implementation == request.param
    return adapter


# --------------------------------------------------------------------------------------------- vanilla

def vanilla_hf_ids(adapter: LlavaTango, num_video_tokens: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """input_ids with transformers' video placeholders, and pixel_values_videos, for the same prompt."""
    clip = adapter.prepare_inputs(FRAMES, QUESTION).clip
    before, after = adapter.prompt_parts(QUESTION, clip)
    video = torch.full((num_video_tokens,), adapter.model.config.video_token_id)
    ids = torch.cat([adapter._tokenize(before), video, adapter._tokenize(after)])[None]
    return ids, adapter.preprocess(clip.frames)[None]


def test_onevision_matches_transformers_video_path(onevision: LlavaTango) -> None:
    ref = onevision.prepare_inputs(FRAMES, QUESTION)
    assert ref.visual_length == NUM_FRAMES * 14 * 14 + 1  # bilinear 27 -> 14, one newline at the end
    ids, pixels = vanilla_hf_ids(onevision, ref.visual_length)
    model = onevision.model
    with torch.no_grad():
        vanilla = model(input_ids=ids, pixel_values_videos=pixels, logits_to_keep=1).logits[0, -1].float()
        vanilla_ids = model.generate(
            input_ids=ids, pixel_values_videos=pixels, do_sample=False, max_new_tokens=6,
            eos_token_id=onevision.stop_token_ids, pad_token_id=onevision.tokenizer.pad_token_id,
        )[0, ids.shape[1]:]
    vanilla_text = onevision.tokenizer.decode(vanilla_ids.tolist(), skip_special_tokens=True).strip()
    for tango in (None, TangoConfig(retention_ratio=1.0)):
        adapter = share(onevision, tango)
        # Two code paths (transformers' video path and ours) differ in float rounding order on CPU.
        torch.testing.assert_close(adapter.first_token_logits(FRAMES, QUESTION), vanilla, rtol=1e-5, atol=1e-5)
        generation = adapter.generate(FRAMES, QUESTION, max_new_tokens=6)
        assert torch.equal(generation.token_ids, vanilla_ids)
        assert generation.text == vanilla_text
        assert generation.stats.visual_tokens_before == generation.stats.visual_tokens_after - 1 == NUM_FRAMES * 196


def llava_video_vanilla_embeds(adapter: LlavaTango) -> torch.Tensor:
    """Unpruned LLaVA-Video embeddings built independently: full tower, 2x2 avg pool, newline per row."""
    model = adapter.model
    clip = adapter.prepare_inputs(FRAMES, QUESTION).clip
    with torch.no_grad():
        hidden = model.model.vision_tower(adapter.preprocess(clip.frames), output_hidden_states=True).hidden_states[-1]
        feats = model.model.multi_modal_projector(hidden)  # (N, 729, D)
        n, _, d = feats.shape
        maps = F.avg_pool2d(feats.view(n, 27, 27, d).permute(0, 3, 1, 2), 2)  # (N, D, 13, 13)
        rows = maps.permute(0, 2, 3, 1)  # (N, 13, 13, D)
        newline = model.model.image_newline.view(1, 1, 1, d).expand(n, 13, 1, d)
        video = torch.cat([rows, newline], dim=2).reshape(-1, d)
        before, after = adapter.prompt_parts(QUESTION, clip)
        embed = model.get_input_embeddings()
        return torch.cat([embed(adapter._tokenize(before)), video, embed(adapter._tokenize(after))])[None]


def test_llava_video_unpruned_layout_and_r1(llava_video: LlavaTango) -> None:
    embeds = llava_video_vanilla_embeds(llava_video)
    inputs = llava_video.prepare_inputs(FRAMES, QUESTION)
    assert inputs.visual_length == NUM_FRAMES * 13 * 14
    assert torch.equal(inputs.inputs_embeds, embeds)
    with torch.no_grad():
        hidden = llava_video.model.model.language_model(inputs_embeds=embeds).last_hidden_state[:, -1]
        vanilla = llava_video.model.lm_head(hidden)[0].float()
    base = llava_video.generate(FRAMES, QUESTION, max_new_tokens=6)
    assert torch.equal(llava_video.first_token_logits(FRAMES, QUESTION), vanilla)
    full = share(llava_video, TangoConfig(retention_ratio=1.0), intra_llm=IntraLLMConfig(layer=INTRA_K))
    assert not full.uses_intra_llm
    assert torch.equal(full.first_token_logits(FRAMES, QUESTION), vanilla)
    generation = full.generate(FRAMES, QUESTION, max_new_tokens=6)
    assert torch.equal(generation.token_ids, base.token_ids) and generation.text == base.text


def test_llava_video_prompt_states_frame_count(llava_video: LlavaTango) -> None:
    clip = llava_video.prepare_inputs(FRAMES, QUESTION).clip
    before, after = llava_video.prompt_parts(QUESTION, clip)
    assert before == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    assert after.startswith(f"\nThe video lasts for 8.00 seconds, and {NUM_FRAMES} frames are uniformly sampled")
    assert "located at 0.00s,2.00s,4.00s,7.00s. Please answer" in after
    assert after.endswith(f"video.\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


# --------------------------------------------------------------------------------------------- pruning

def expected_prune(adapter: LlavaTango, config: TangoConfig):
    """Tango's keep set on the adapter's features and saliency, computed step by step here."""
    clip = adapter.prepare_inputs(FRAMES, QUESTION).clip
    with torch.no_grad():
        hidden = adapter.vision_hidden_states(adapter.preprocess(clip.frames))
        features, grid = adapter.pool_features(adapter.model.model.multi_modal_projector(hidden))
        saliency = adapter.pool_saliency(adapter._get_saliency_head()(hidden).attention)
    result = tango_prune(features, saliency, grid, torch.tensor(clip.timestamps, dtype=torch.float32), config)
    return result, grid


@pytest.mark.parametrize("family", ["llava_onevision", "llava_video"])
def test_pruned_visual_token_count(family: str, onevision: LlavaTango, llava_video: LlavaTango) -> None:
    base = onevision if family == "llava_onevision" else llava_video
    config = TangoConfig(retention_ratio=0.1, sink_positions=(11, 26))
    adapter = share(base, config, intra_llm=None)
    result, grid = expected_prune(adapter, config)
    keep = result.keep_index
    if family == "llava_onevision":
        expected = keep.numel() + 1
    else:
        expected = keep.numel() + torch.unique(torch.div(keep, grid[1], rounding_mode="floor")).numel()
    seen: List[int] = []
    layer0 = adapter.model.model.language_model.layers[0]
    handle = layer0.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        inputs = adapter.prepare_inputs(FRAMES, QUESTION)
        generation = adapter.generate_from_inputs(inputs, max_new_tokens=1)
    finally:
        handle.remove()
    assert torch.equal(inputs.keep_index, keep)
    assert inputs.visual_length == expected == generation.stats.visual_tokens_after
    assert generation.stats.visual_tokens_before == NUM_FRAMES * grid[0] * grid[1]
    assert keep.numel() < 0.2 * NUM_FRAMES * grid[0] * grid[1]
    text_tokens = inputs.inputs_embeds.shape[1] - inputs.visual_length
    assert seen == [text_tokens + expected]  # the LLM's first layer sees exactly the pruned prompt
    # The kept features sit in keep order, newlines where expected.
    visual = inputs.inputs_embeds[0, inputs.visual_start : inputs.visual_start + inputs.visual_length]
    newline = adapter.model.model.image_newline
    is_newline = (visual == newline).all(-1)
    assert torch.equal(visual[~is_newline], result.kept_features)
    if family == "llava_onevision":
        assert is_newline.nonzero().flatten().tolist() == [expected - 1]
    else:
        rows = torch.div(keep, grid[1], rounding_mode="floor")
        last_of_row = torch.ones_like(rows, dtype=torch.bool)
        last_of_row[:-1] = rows[1:] != rows[:-1]
        token_slots = (~is_newline).nonzero().flatten()
        assert torch.equal(token_slots[last_of_row] + 1, is_newline.nonzero().flatten())
    assert set(generation.stats.times_ms) >= {"vit", "prune", "prefill"}


def no_cache_logits(adapter: LlavaTango, embeds: torch.Tensor, tokens: Sequence[int]) -> torch.Tensor:
    """(T+1, vocab) logits after the prompt and after each of ``tokens``, with full recomputation."""
    embed = adapter.model.get_input_embeddings()
    sequence = torch.cat([embeds, embed(torch.tensor(list(tokens), dtype=torch.long))[None]], dim=1)
    with torch.no_grad():
        hidden = adapter.model.model.language_model(inputs_embeds=sequence, use_cache=False).last_hidden_state
        start = embeds.shape[1] - 1
        return adapter.model.lm_head(hidden[0, start:]).float()


def test_decoding_after_pruning_matches_no_cache(onevision: LlavaTango) -> None:
    adapter = share(onevision, TangoConfig(retention_ratio=0.1, segmenter="fastvid"))
    inputs = adapter.prepare_inputs(FRAMES, QUESTION)
    tokens = adapter.generate_from_inputs(inputs, max_new_tokens=6).token_ids.tolist()
    logits = no_cache_logits(adapter, inputs.inputs_embeds, tokens)
    assert logits[: len(tokens)].argmax(-1).tolist() == tokens
    first = adapter.first_token_logits(FRAMES, QUESTION)
    torch.testing.assert_close(first, logits[0], atol=1e-5, rtol=1e-5)


def test_file_path_input(onevision: LlavaTango, tmp_path) -> None:
    path = write_video(str(tmp_path / "clip.mp4"), structured_frames(9, 64)[:, :48], fps=4)
    adapter = share(onevision, TangoConfig(retention_ratio=0.15))
    generation = adapter.generate(path, QUESTION, max_new_tokens=2)
    assert generation.stats.num_frames == NUM_FRAMES
    assert 1 <= generation.token_ids.numel() <= 2


# --------------------------------------------------------------------------------------------- intra-LLM

def causal_mask(length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(1, 1, S, S) additive causal mask, taken as is by both eager and sdpa attention."""
    blocked = torch.ones(length, length, dtype=torch.bool).triu(1)
    return torch.zeros(length, length, dtype=dtype).masked_fill(blocked, torch.finfo(dtype).min)[None, None]


def causal_attention_rows(layer, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Full (S, S) post-softmax causal attention of a Qwen2 layer, averaged over heads (slow reference)."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    s = x.shape[1]
    q = attn.q_proj(x).view(1, s, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(1, s, -1, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)) * attn.head_dim**-0.5
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores.float(), dim=-1).mean(dim=1)[0]


def intra_llm_reference(
    adapter: LlavaTango, inputs: LlavaInputs, tokens: Sequence[int], k_layer: int, keep_ratio: float
) -> Tuple[torch.Tensor, int]:
    """Logits (T+1, vocab) of the prompt's last token and of each appended token, recomputed without cache:
    layers < K on everything, merge at K from the prompt's layer K-1 attention, layers >= K on the kept tokens."""
    lm = adapter.model.model.language_model
    embed = adapter.model.get_input_embeddings()
    prompt_len = inputs.inputs_embeds.shape[1]
    seq = torch.cat([inputs.inputs_embeds, embed(torch.tensor(list(tokens), dtype=torch.long))[None]], dim=1)
    positions = torch.arange(seq.shape[1])[None]
    with torch.no_grad():
        cos, sin = lm.rotary_emb(seq, positions)
        hidden = seq
        mask = causal_mask(seq.shape[1], seq.dtype)
        for layer in lm.layers[: k_layer - 1]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin))
        rows = causal_attention_rows(lm.layers[k_layer - 1], hidden, cos, sin)
        hidden = lm.layers[k_layer - 1](hidden, attention_mask=mask, position_embeddings=(cos, sin))

        start, stop = inputs.visual_start, inputs.visual_start + inputs.visual_length
        score = rows[prompt_len - 1, start:stop]
        num_keep = round(inputs.visual_length * keep_ratio)
        order = sorted(range(inputs.visual_length), key=lambda i: (-float(score[i]), i))
        kept = torch.tensor(sorted(order[:num_keep]))
        dropped = torch.tensor(sorted(order[num_keep:]))
        visual = hidden[0, start:stop]
        similarity = F.normalize(visual[dropped], dim=-1) @ F.normalize(visual[kept], dim=-1).T
        target = similarity.argmax(-1)
        merged = hidden.clone()
        for slot, position in enumerate(kept.tolist()):
            members = visual[dropped[target == slot]]
            pooled = (visual[position] + members.sum(0)) / (1 + members.shape[0])
            merged[0, start + position] = 0.6 * visual[position] + 0.4 * pooled
        keep_positions = torch.cat([torch.arange(start), start + kept, torch.arange(stop, seq.shape[1])])
        hidden = merged[:, keep_positions]
        cos_kept, sin_kept = cos[:, keep_positions], sin[:, keep_positions]
        mask = causal_mask(hidden.shape[1], hidden.dtype)
        for layer in lm.layers[k_layer:]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos_kept, sin_kept))
        hidden = lm.norm(hidden)
        last_prompt = prompt_len - 1 - (inputs.visual_length - num_keep)
        return adapter.model.lm_head(hidden[0, last_prompt:]).float(), num_keep


def test_layer_loop_reference_is_the_plain_model(llava_video: LlavaTango) -> None:
    """Sanity of the slow reference's building blocks: the layer loop with an explicit causal mask
    is the plain model, under sdpa and eager alike."""
    inputs = llava_video.prepare_inputs(FRAMES, QUESTION)
    lm = llava_video.model.model.language_model
    embeds = inputs.inputs_embeds[:, :300]
    with torch.no_grad():
        cos, sin = lm.rotary_emb(embeds, torch.arange(300)[None])
        hidden = embeds
        for layer in lm.layers:
            hidden = layer(hidden, attention_mask=causal_mask(300), position_embeddings=(cos, sin))
        torch.testing.assert_close(lm.norm(hidden), lm(inputs_embeds=embeds).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_llava_video_intra_llm_matches_slow_reference(llava_video: LlavaTango) -> None:
    r_pre = round(IntraLLMConfig(layer=INTRA_K, keep_ratio=0.5).pre_llm_ratio(0.1, 4), 6)
    adapter = share(llava_video, TangoConfig(retention_ratio=r_pre, similarity_threshold=0.65), intra_llm=IntraLLMConfig(layer=INTRA_K))
    assert adapter.uses_intra_llm
    inputs = adapter.prepare_inputs(FRAMES, QUESTION)
    generation = adapter.generate_from_inputs(inputs, max_new_tokens=5)
    tokens = generation.token_ids.tolist()
    reference, num_keep = intra_llm_reference(adapter, inputs, tokens, INTRA_K, 0.5)
    assert generation.stats.visual_tokens_after == inputs.visual_length
    assert generation.stats.visual_tokens_after_intra_llm == num_keep == round(inputs.visual_length * 0.5)
    first = adapter.first_token_logits(FRAMES, QUESTION)
    torch.testing.assert_close(first, reference[0], atol=1e-5, rtol=1e-5)
    assert reference[: len(tokens)].argmax(-1).tolist() == tokens


def test_intra_llm_off_for_onevision_and_configurable(onevision: LlavaTango, llava_video: LlavaTango) -> None:
    assert not share(onevision, TangoConfig(retention_ratio=0.1)).uses_intra_llm
    assert not share(llava_video, TangoConfig(retention_ratio=0.1), intra_llm=None).uses_intra_llm
    assert LlavaTango(llava_video.model, llava_video.tokenizer, family="llava_video").intra_llm_layer == 3  # 18/28 of 4
    with pytest.raises(ValueError, match=r"intra-LLM layer K must be in \[1, 3\], got 4"):
        share(llava_video, None, intra_llm=IntraLLMConfig(layer=4))
    assert round(IntraLLMConfig().pre_llm_ratio(0.1), 6) == 0.121739


def test_torch_preprocessing_close_to_pil_and_keeps_nearly_the_same_tokens(onevision: LlavaTango) -> None:
    """The device path (one antialiased bicubic resize of all frames) stays within about a grey
    level of PIL's per-frame bicubic, and Tango keeps nearly the same tokens on it."""
    frames = structured_frames(NUM_FRAMES, size=90)  # 90 -> 54 px: a real downscale
    pil = share(onevision, TangoConfig(retention_ratio=0.2), preprocessing="pil")
    on_device = share(onevision, TangoConfig(retention_ratio=0.2), preprocessing="torch")
    grey = 255.0 * onevision.image_std[0]  # pixels are (x / 255 - 0.5) / 0.5
    difference = (pil.preprocess(frames) - on_device.preprocess(frames)).abs() * grey
    assert float(difference.mean()) < 0.5 and float(difference.max()) <= 4.0
    kept_pil = set(pil.prepare_inputs(frames, QUESTION).keep_index.tolist())
    kept_torch = set(on_device.prepare_inputs(frames, QUESTION).keep_index.tolist())
    assert len(kept_pil & kept_torch) / len(kept_pil | kept_torch) > 0.8
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        share(onevision, None, preprocessing="opencv")

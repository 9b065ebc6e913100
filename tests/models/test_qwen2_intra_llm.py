"""Tests of the intra-LLM pruning runner on a tiny random Qwen2Model (CPU, offline)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math
from typing import List, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from transformers import Qwen2Config, Qwen2Model  # noqa: E402

from tango_core.models.base import greedy_decode  # noqa: E402
from tango_core.models.qwen2_intra_llm import IntraLLMCache, IntraLLMQwen2Runner  # noqa: E402

HIDDEN = 64
LAYERS = 4
VOCAB = 97
PRUNE_LAYER = 2
# Prompt layout: 5 text tokens, 16 visual tokens, 6 text tokens.
SEQ, VIS_START, VIS_END = 27, 5, 21
# float64 runs still merge in float32 (merge_and_prune_visual's arithmetic), hence not 1e-12.
TOL64 = dict(atol=1e-5, rtol=1e-5)


def make_model(attn: str = "sdpa", dtype: torch.dtype = torch.float32, seed: int = 0) -> Qwen2Model:
    """Tiny Qwen2Model (4 layers, hidden 64, 4 heads, 2 KV heads) with weights large enough for peaked attention."""
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        attn_implementation=attn,
    )
    torch.manual_seed(seed)
    model = Qwen2Model(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "norm" in name:
                param.copy_(1.0 + 0.1 * noise)
            elif "embed" in name:
                param.copy_(noise)
            else:
                param.copy_(0.15 * noise)
    assert model.config._attn_implementation == attn
    return model.eval().to(dtype)


def make_embeds(length: int, dtype: torch.dtype = torch.float32, seed: int = 1) -> torch.Tensor:
    """(1, length, HIDDEN) random input embeddings."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, length, HIDDEN, generator=gen).to(dtype)


# ---------------------------------------------------------------- slow reference (float64)


def _rms(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))


def _rope(positions: torch.Tensor, head_dim: int, theta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = positions.double()[:, None] * inv_freq[None]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def ref_layer(
    layer: torch.nn.Module, h: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, theta: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One decoder layer with explicit attention. h: (S, D); allowed: (S, S) bool. Returns h, probs (H, S, S)."""
    attn = layer.self_attn
    hd = attn.head_dim
    seq = h.shape[0]
    x = _rms(h, layer.input_layernorm)
    q = (x @ attn.q_proj.weight.T + attn.q_proj.bias).view(seq, -1, hd)
    k = (x @ attn.k_proj.weight.T + attn.k_proj.bias).view(seq, -1, hd)
    v = (x @ attn.v_proj.weight.T + attn.v_proj.bias).view(seq, -1, hd)
    cos, sin = _rope(positions, hd, theta)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    out = torch.einsum("hqk,khd->qhd", probs, v).reshape(seq, -1) @ attn.o_proj.weight.T
    h = h + out
    x = _rms(h, layer.post_attention_layernorm)
    mlp = layer.mlp
    h = h + (F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    return h, probs


@torch.no_grad()
def ref_forward(
    model: Qwen2Model,
    embeds: torch.Tensor,
    visual_start: int,
    visual_end: int,
    prune_layer: int,
    keep_ratio: float,
    merge_weight: float,
    bidirectional: bool = False,
    extra: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, List[int]]:
    """Pruned forward recomputed from scratch in float64.

    embeds: (S, D) prompt; extra: (T, D) decoded tokens appended after the prompt (positions S ..).
    Returns final-normed hidden (S' + T, D) and the kept prompt indices.
    """
    model = model.double()
    theta = model.config.rope_parameters["rope_theta"]
    seq = embeds.shape[0]
    h = embeds.double() if extra is None else torch.cat([embeds, extra]).double()
    total = h.shape[0]
    positions = torch.arange(total)
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    for i in range(prune_layer):
        allowed = torch.ones_like(causal) if (bidirectional and i == prune_layer - 1) else causal
        h, probs = ref_layer(model.layers[i], h, positions, allowed, theta)
    last = probs[:, seq - 1, :].mean(0)
    num_visual = visual_end - visual_start
    att = [float(last[visual_start + j]) for j in range(num_visual)]
    num_keep = round(num_visual * keep_ratio)
    ranked = sorted(range(num_visual), key=lambda j: (-att[j], j))
    kept = sorted(ranked[:num_keep])
    dropped = ranked[num_keep:]
    new_h = h.clone()
    sums = {j: torch.zeros(h.shape[1], dtype=h.dtype) for j in kept}
    counts = {j: 0 for j in kept}
    for d in dropped:
        a = h[visual_start + d]
        best, best_sim = None, -float("inf")
        for j in kept:
            b = h[visual_start + j]
            sim = float(a @ b / (a.norm() * b.norm()))
            if sim > best_sim:
                best, best_sim = j, sim
        sums[best] += a
        counts[best] += 1
    for j in kept:
        x = h[visual_start + j]
        pooled = (x + sums[j]) / (1 + counts[j])
        new_h[visual_start + j] = (1 - merge_weight) * x + merge_weight * pooled
    keep = list(range(visual_start)) + [visual_start + j for j in kept] + list(range(visual_end, seq))
    index = torch.tensor(keep + list(range(seq, total)))
    h, positions = new_h[index], positions[index]
    causal = torch.ones(len(index), len(index), dtype=torch.bool).tril()
    for i in range(prune_layer, len(model.layers)):
        h, _ = ref_layer(model.layers[i], h, positions, causal, theta)
    return _rms(h, model.norm), keep


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_keep_all_matches_plain_forward(attn: str) -> None:
    model = make_model(attn)
    runner = IntraLLMQwen2Runner(model, prune_layer=PRUNE_LAYER, keep_ratio=1.0)
    embeds = make_embeds(SEQ)
    new = make_embeds(4, seed=7)
    with torch.no_grad():
        hidden, cache = runner.prefill(embeds, None, VIS_START, VIS_END)
        assert hidden.shape == (1, SEQ, HIDDEN)
        assert cache.keep_positions.tolist() == list(range(SEQ))
        expected = model(inputs_embeds=embeds).last_hidden_state
        torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-5)
        for t in range(new.shape[1]):
            out, cache = runner.decode_step(new[:, t : t + 1], cache)
            full = model(inputs_embeds=torch.cat([embeds, new[:, : t + 1]], dim=1)).last_hidden_state
            torch.testing.assert_close(out, full[:, -1:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_empty_visual_span_is_plain_forward(attn: str) -> None:
    model = make_model(attn)
    runner = IntraLLMQwen2Runner(model, prune_layer=PRUNE_LAYER, keep_ratio=0.5)
    embeds = make_embeds(SEQ)
    hidden, cache = runner.prefill(embeds, None, 4, 4)
    with torch.no_grad():
        expected = model(inputs_embeds=embeds).last_hidden_state
    torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-5)
    assert cache.num_visual_kept == 0


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "keep_ratio, merge_weight, prune_layer, span",
    [
        (0.5, 0.4, PRUNE_LAYER, (VIS_START, VIS_END)),
        (0.3, 0.4, 1, (VIS_START, VIS_END)),  # round(4.8) = 5 kept
        (0.25, 0.7, 3, (2, 12)),  # round(2.5) = 2 kept (half to even)
    ],
)
def test_prefill_matches_slow_reference(attn, keep_ratio, merge_weight, prune_layer, span) -> None:
    vs, ve = span
    model = make_model(attn, dtype=torch.float64)
    runner = IntraLLMQwen2Runner(model, prune_layer=prune_layer, keep_ratio=keep_ratio, merge_weight=merge_weight)
    embeds = make_embeds(SEQ, dtype=torch.float64)
    hidden, cache = runner.prefill(embeds, None, vs, ve)
    expected, keep = ref_forward(model, embeds[0], vs, ve, prune_layer, keep_ratio, merge_weight)
    assert cache.keep_positions.tolist() == keep
    assert cache.num_visual_kept == round((ve - vs) * keep_ratio)
    assert hidden.shape == (1, len(keep), HIDDEN)
    torch.testing.assert_close(hidden[0], expected, **TOL64)
    for i, layer in enumerate(cache.key_values.layers):
        assert layer.keys.shape[-2] == (SEQ if i < prune_layer else len(keep))

    # float32 runner: same kept set, close hidden states.
    model32 = make_model(attn, dtype=torch.float32)
    runner32 = IntraLLMQwen2Runner(model32, prune_layer=prune_layer, keep_ratio=keep_ratio, merge_weight=merge_weight)
    hidden32, cache32 = runner32.prefill(embeds.float(), None, vs, ve)
    assert cache32.keep_positions.tolist() == keep
    torch.testing.assert_close(hidden32[0].double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_explicit_position_ids_are_used(attn: str) -> None:
    model = make_model(attn, dtype=torch.float64)
    runner = IntraLLMQwen2Runner(model, prune_layer=PRUNE_LAYER, keep_ratio=1.0)
    embeds = make_embeds(SEQ, dtype=torch.float64)
    shifted = torch.arange(SEQ)[None] + 3
    hidden, cache = runner.prefill(embeds, shifted, VIS_START, VIS_END)
    with torch.no_grad():
        expected = model(inputs_embeds=embeds, position_ids=shifted).last_hidden_state
    torch.testing.assert_close(hidden, expected, atol=1e-10, rtol=1e-10)
    assert cache.next_position == SEQ + 3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_decode_matches_recomputation(attn: str) -> None:
    model = make_model(attn, dtype=torch.float64)
    runner = IntraLLMQwen2Runner(model, prune_layer=PRUNE_LAYER, keep_ratio=0.5)
    embeds = make_embeds(SEQ, dtype=torch.float64)
    new = make_embeds(4, dtype=torch.float64, seed=11)
    _, cache = runner.prefill(embeds, None, VIS_START, VIS_END)
    kept = cache.kept_length
    for t in range(new.shape[1]):
        out, cache = runner.decode_step(new[:, t : t + 1], cache)
        expected, _ = ref_forward(model, embeds[0], VIS_START, VIS_END, PRUNE_LAYER, 0.5, 0.4, extra=new[0, : t + 1])
        torch.testing.assert_close(out[0, 0], expected[-1], **TOL64)
        assert cache.next_position == SEQ + t + 1
        assert cache.num_generated == t + 1
        for i, layer in enumerate(cache.key_values.layers):
            assert layer.keys.shape[-2] == (SEQ if i < PRUNE_LAYER else kept) + t + 1


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_generate_is_greedy_and_stops_at_eos(attn: str) -> None:
    model = make_model(attn, dtype=torch.float64)
    runner = IntraLLMQwen2Runner(model, prune_layer=PRUNE_LAYER, keep_ratio=0.5)
    torch.manual_seed(3)
    lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False).double()
    embeds = make_embeds(SEQ, dtype=torch.float64)

    def generate(max_new_tokens: int, stop=()) -> torch.Tensor:
        """The adapters' one greedy decoder over the runner's prefill and decode steps."""
        state = {}

        def first_logits() -> torch.Tensor:
            hidden, state["cache"] = runner.prefill(embeds, None, VIS_START, VIS_END)
            return lm_head(hidden[:, -1])

        def step(token: torch.Tensor, n: int) -> torch.Tensor:
            hidden, state["cache"] = runner.decode_step(model.embed_tokens(token[:, None]), state["cache"])
            return lm_head(hidden[:, -1])

        return greedy_decode(first_logits, step, stop, max_new_tokens)[0]

    with torch.no_grad():
        tokens = generate(5)
        assert tokens.dtype == torch.long and tokens.shape == (5,)
        # Greedy recomputation with the slow reference.
        expected: List[int] = []
        extra = torch.empty(0, HIDDEN, dtype=torch.float64)
        for _ in range(5):
            hidden, _ = ref_forward(model, embeds[0], VIS_START, VIS_END, PRUNE_LAYER, 0.5, 0.4, extra=extra)
            token = int(lm_head(hidden[-1]).argmax())
            expected.append(token)
            extra = torch.cat([extra, model.embed_tokens.weight[token][None]])
        assert tokens.tolist() == expected
        stopped = generate(5, [expected[1]])
        assert stopped.tolist() == expected[: expected.index(expected[1]) + 1]
        assert generate(0).numel() == 0


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bidirectional_bug_option(attn: str) -> None:
    model = make_model(attn, dtype=torch.float64)
    embeds = make_embeds(SEQ, dtype=torch.float64)
    fixed = IntraLLMQwen2Runner(model, prune_layer=PRUNE_LAYER, keep_ratio=0.5)
    buggy = IntraLLMQwen2Runner(model, prune_layer=PRUNE_LAYER, keep_ratio=0.5, reference_bidirectional_bug=True)
    out_fixed, cache_fixed = fixed.prefill(embeds, None, VIS_START, VIS_END)
    out_buggy, cache_buggy = buggy.prefill(embeds, None, VIS_START, VIS_END)
    assert torch.equal(cache_fixed.keep_positions, cache_buggy.keep_positions)
    assert not torch.allclose(out_fixed[:, :-1], out_buggy[:, :-1], atol=1e-3)
    expected, keep = ref_forward(model, embeds[0], VIS_START, VIS_END, PRUNE_LAYER, 0.5, 0.4, bidirectional=True)
    assert cache_buggy.keep_positions.tolist() == keep
    torch.testing.assert_close(out_buggy[0], expected, **TOL64)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs(dtype: torch.dtype, attn: str) -> None:
    model = make_model(attn, dtype=dtype)
    runner = IntraLLMQwen2Runner(model, prune_layer=PRUNE_LAYER, keep_ratio=0.5)
    embeds = make_embeds(SEQ, dtype=dtype)
    hidden, cache = runner.prefill(embeds, None, VIS_START, VIS_END)
    assert hidden.dtype == dtype and hidden.shape == (1, SEQ - 8, HIDDEN)
    out, cache = runner.decode_step(make_embeds(1, dtype=dtype, seed=5), cache)
    assert out.shape == (1, 1, HIDDEN) and torch.isfinite(out).all() and torch.isfinite(hidden).all()
    assert isinstance(cache, IntraLLMCache) and cache.num_visual_kept == 8


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_invalid_inputs_raise(attn: str) -> None:
    model = make_model(attn)
    with pytest.raises(ValueError, match="prune_layer"):
        IntraLLMQwen2Runner(model, prune_layer=0)
    with pytest.raises(ValueError, match="prune_layer"):
        IntraLLMQwen2Runner(model, prune_layer=LAYERS)
    with pytest.raises(ValueError, match="keep_ratio"):
        IntraLLMQwen2Runner(model, prune_layer=PRUNE_LAYER, keep_ratio=0.0)
    with pytest.raises(ValueError, match="merge_weight"):
        IntraLLMQwen2Runner(model, prune_layer=PRUNE_LAYER, merge_weight=1.5)
    with pytest.raises(TypeError, match="Qwen2Model"):
        IntraLLMQwen2Runner(torch.nn.Linear(2, 2))
    runner = IntraLLMQwen2Runner(model, prune_layer=PRUNE_LAYER)
    embeds = make_embeds(SEQ)
    for start, end in [(-1, 5), (5, SEQ), (5, SEQ + 3), (10, 5)]:
        with pytest.raises(ValueError, match="visual span"):
            runner.prefill(embeds, None, start, end)
    with pytest.raises(ValueError, match="inputs_embeds"):
        runner.prefill(make_embeds(SEQ).expand(2, -1, -1), None, VIS_START, VIS_END)
    with pytest.raises(ValueError, match="position_ids"):
        runner.prefill(embeds, torch.arange(SEQ - 1)[None], VIS_START, VIS_END)
    _, cache = runner.prefill(embeds, None, VIS_START, VIS_END)
    with pytest.raises(ValueError, match="token_embeds"):
        runner.decode_step(make_embeds(2), cache)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_low_layers_on_a_padded_prompt_rank_by_the_real_tokens(attn: str) -> None:
    """The graphed prefill's first body on a prompt padded at its end: the real tokens' hidden
    states and layer K-1's last attention row are the unpadded prompt's (the row computed apart
    here by softmax over the real keys only); the padding gets no attention."""
    from transformers import StaticCache

    model = make_model(attn)
    runner = IntraLLMQwen2Runner(model, prune_layer=PRUNE_LAYER)
    embeds = make_embeds(SEQ)
    padded = torch.cat([embeds, 3.0 * torch.ones(1, 5, HIDDEN)], dim=1)  # padding with large keys
    positions = torch.arange(SEQ + 5)[None]
    last = torch.tensor([SEQ - 1])
    with torch.no_grad():
        cache = StaticCache(config=model.config, max_cache_len=64)
        hidden, row = runner.low_layers(None, padded, positions, None, last, cache)
        plain = model(inputs_embeds=embeds, output_hidden_states=True, output_attentions=attn == "eager")
    torch.testing.assert_close(hidden[:, :SEQ], plain.hidden_states[PRUNE_LAYER], atol=1e-5, rtol=1e-5)
    assert torch.all(row[SEQ:] == 0)
    torch.testing.assert_close(row.sum(), torch.tensor(1.0), atol=1e-5, rtol=0)
    if attn == "eager":  # transformers' own attention weights of layer K-1, last row, mean over heads
        expected = plain.attentions[PRUNE_LAYER - 1][0, :, -1].float().mean(0)
        torch.testing.assert_close(row[:SEQ], expected, atol=1e-5, rtol=1e-4)

"""Decoding on a static cache gives the growing cache's tokens (CUDA graphs replay the same step)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tango_core import TangoConfig  # noqa: E402
from tango_core.models.loader import load_tango_model  # noqa: E402
from tango_core.models.static_decoding import bucket_length  # noqa: E402
from tango_core.testing.tiny_llava import save_tiny_llava  # noqa: E402
from tango_core.testing.tiny_qwen import build_tiny_qwen25vl  # noqa: E402

FRAMES = np.random.default_rng(0).integers(0, 255, (8, 112, 140, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    return {
        "llava_onevision": (save_tiny_llava(str(root / "ov"), "llava_onevision").model, {"num_frames": 8}),
        "qwen2_5_vl": (build_tiny_qwen25vl(str(root / "qwen")), {"video_min_pixels": 4 * 28 * 28}),
        "llava_video": (save_tiny_llava(str(root / "video"), "llava_video").model, {"num_frames": 8}),
    }


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "llava_video"])
@pytest.mark.parametrize("ratio", [None, 0.2])
def test_static_cache_matches_dynamic_cache(checkpoints, family, ratio) -> None:
    """LLaVA-Video at r = 0.2 includes the intra-LLM stage: two groups of layers, each writing its
    own length into one static cache."""
    path, options = checkpoints[family]
    tango = None if ratio is None else TangoConfig(retention_ratio=ratio)
    model = load_tango_model(path, tango=tango, dtype=torch.float32, device="cpu", **options)
    model.stop_token_ids = []  # decode the whole budget
    results = {}
    for mode in ("dynamic", "static"):
        model.decoding = mode
        results[mode] = model.decode(model.prepare(FRAMES, "What happens?"), 12, keep_logits=True)
    assert torch.equal(results["static"][0], results["dynamic"][0])
    torch.testing.assert_close(results["static"][1], results["dynamic"][1], rtol=1e-4, atol=1e-4)
    assert model._static.entries  # the static path really ran
    if family == "llava_video" and ratio is not None:
        cache = next(iter(model._static.entries.values())).cache
        prefill = model.prepare(FRAMES, "What happens?")
        model.decode(prefill, 12)
        full, kept = prefill.inputs_embeds.shape[1], prefill.stats.visual_tokens_after_intra_llm
        lengths = [int(layer.cumulative_length) for layer in cache.layers]
        k = model.intra_llm_layer
        assert lengths[:k] == [full + 11] * k  # 12 tokens: 11 of them fed back
        assert len(set(lengths[k:])) == 1 and lengths[k] < lengths[0]
        assert kept is not None and kept < prefill.visual_length
    again = model.decode(model.prepare(FRAMES, "What happens?"), 12)[0]  # a reused cache needs no clearing
    assert torch.equal(again, results["dynamic"][0])


def test_bucket_length() -> None:
    assert [bucket_length(n) for n in (1, 1024, 1025, 5000)] == [1024, 1024, 2048, 5120]


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "llava_video"])
@pytest.mark.parametrize("quantum", [64, 7])
def test_padded_prompt_decodes_like_the_unpadded_one(checkpoints, family, quantum) -> None:
    """The prompt padded at its end (what the captured prefill runs): under the causal mask the
    real tokens' logits and every generated token are the unpadded prompt's, and decoding
    continues at the real length (the first step overwrites the first padding entry). LLaVA-Video:
    both groups of layers padded apart (S and S' tokens), the kept tokens chosen from the real
    tokens' attention only."""
    from tango_core.models.static_decoding import StaticDecoding

    path, options = checkpoints[family]
    model = load_tango_model(path, tango=TangoConfig(retention_ratio=0.3), dtype=torch.float32, device="cpu", **options)
    model.stop_token_ids = []
    model.decoding = "dynamic"
    expected = model.prepare(FRAMES, "What happens?")
    expected_ids, expected_logits = model.decode(expected, 10, keep_logits=True)
    if family == "llava_video":  # a quantum that pads both groups (S' follows the kept count, which varies by machine)
        kept = expected.inputs_embeds.shape[1] - expected.visual_length + expected.stats.visual_tokens_after_intra_llm
        quantum = next(q for q in range(quantum, quantum + 8) if expected.inputs_embeds.shape[1] % q and kept % q)
    model.decoding = "static"
    shape = (3, 1, 1) if family == "qwen2_5_vl" else (1, 1)
    text_config = model.model.config.get_text_config(decoder=True)
    model._static = StaticDecoding(model.model, text_config, "cpu", shape, capture=False, pad_prompts=True, prompt_quantum=quantum)
    prefill = model.prepare(FRAMES, "What happens?")
    length = prefill.inputs_embeds.shape[1]
    assert length % quantum != 0  # the prompt really is padded
    ids, logits = model.decode(prefill, 10, keep_logits=True)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    cache = next(iter(model._static.entries.values())).cache
    lengths = [int(layer.cumulative_length) for layer in cache.layers]
    if family == "llava_video":
        low, high = model._static.prompts.values()
        kept = length - prefill.visual_length + prefill.stats.visual_tokens_after_intra_llm
        assert kept % quantum != 0 and high.embeds.shape[1] == -(-kept // quantum) * quantum
        k = model.intra_llm_layer
        assert lengths == [length + 9] * k + [kept + 9] * (len(lengths) - k)
    else:
        (low,) = model._static.prompts.values()
        assert lengths == [length + 9] * len(cache.layers)
    assert low.embeds.shape[1] == -(-length // quantum) * quantum


def test_long_prompts_are_not_padded() -> None:
    from tango_core.models.static_decoding import StaticDecoding

    seen = {}

    def body(model, embeds, positions, slots, last, cache):
        seen.update(length=embeds.shape[1], slots=slots.tolist(), last=int(last))
        return torch.zeros(1, 3)

    static = StaticDecoding(None, None, "cpu", capture=False, pad_prompts=True, prompt_quantum=8, max_padded_prompt=10)
    static.prefill(body, None, torch.zeros(1, 12, 4), torch.arange(12)[None])
    assert seen == {"length": 12, "slots": list(range(12)), "last": 11}
    assert not static.prompts


def test_unknown_decoding_mode_is_refused(checkpoints) -> None:
    path, options = checkpoints["llava_onevision"]
    with pytest.raises(ValueError, match="decoding must be one of"):
        load_tango_model(path, dtype=torch.float32, device="cpu", decoding="fast", **options)


def _pruning_onevision(checkpoints, steps: int):
    """The tiny OneVision at r = 0.3 and its answer on the growing cache: (model, ids, logits)."""
    path, options = checkpoints["llava_onevision"]
    model = load_tango_model(path, tango=TangoConfig(retention_ratio=0.3), dtype=torch.float32, device="cpu", **options)
    model.stop_token_ids = []
    model.decoding = "dynamic"
    ids, logits = model.decode(model.prepare(FRAMES, "What happens?"), steps, keep_logits=True)
    return model, ids, logits


def test_compiled_steps_decode_like_the_growing_cache(checkpoints) -> None:
    """decoding="compiled": each step torch.compile-d (inductor on the CPU here), the same tokens."""
    model, expected_ids, expected_logits = _pruning_onevision(checkpoints, 6)
    model.decoding = "compiled"
    ids, logits = model.decode(model.prepare(FRAMES, "What happens?"), 6, keep_logits=True)
    assert model._static.compile_steps  # compiling worked
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llava_onevision", "llava_video"])
def test_compiled_prefills_decode_like_the_growing_cache(checkpoints, family) -> None:
    """decoding="compiled" with padded prompts: the prefill bodies torch.compile-d too (on the CPU
    here, where nothing is captured; LLaVA-Video's two intra-LLM halves each), the same answer."""
    from tango_core.models import static_decoding

    path, options = checkpoints[family]
    model = load_tango_model(path, tango=TangoConfig(retention_ratio=0.3), dtype=torch.float32, device="cpu", **options)
    model.stop_token_ids = []
    model.decoding = "dynamic"
    prefill = model.prepare(FRAMES, "What happens?")
    expected_ids, expected_logits = model.decode(prefill, 4, keep_logits=True)
    model.decoding = "compiled"
    static = model._static_decoding()
    static.pad_prompts, static.prompt_capture_after, static.prompt_quantum = True, 1, 16
    static_decoding.clear_compiled()
    ids, logits = model.decode(prefill, 4, keep_logits=True)
    assert static.compile_prefills  # compiling worked
    compiled_names = {function.__name__ for function in static_decoding._COMPILED}
    expected_bodies = {"low_layers", "high_layers"} if family == "llava_video" else {"_static_prefill"}
    assert expected_bodies <= compiled_names
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    static_decoding.clear_compiled()


def test_a_failing_compile_decodes_uncompiled(checkpoints, monkeypatch, caplog, request) -> None:
    import logging

    from tango_core.models import static_decoding

    class InductorFailure(RuntimeError):
        pass

    InductorFailure.__module__ = "torch._inductor.exc"

    def broken_compile(fn, *args, **kwargs):
        def run(*a, **k):
            raise InductorFailure("no C compiler")
        return run

    static_decoding.clear_compiled()
    request.addfinalizer(static_decoding.clear_compiled)  # no broken compiled bodies left for later tests
    monkeypatch.setattr(torch, "compile", broken_compile)
    model, expected, _ = _pruning_onevision(checkpoints, 6)
    model.decoding = "compiled"
    static = model._static_decoding()
    static.pad_prompts, static.prompt_capture_after = True, 1  # the prefill compiled as well (CPU)
    with caplog.at_level(logging.WARNING, logger="tango_core"):
        got = model.decode(model.prepare(FRAMES, "What happens?"), 6)[0]
        again = model.decode(model.prepare(FRAMES, "What happens?"), 6)[0]
    assert torch.equal(got, expected) and torch.equal(again, expected)
    assert not static.compile_steps and not static.compile_prefills
    assert sum("compiling the decoding step failed" in r.message for r in caplog.records) == 1
    assert sum("compiling the prefill failed" in r.message for r in caplog.records) == 1


def test_compiled_bodies_keep_no_owner_alive() -> None:
    """A bound step body (LLaVA-Video's intra-LLM runner) is compiled once as its function; the
    cache of compiled bodies holds no runner, hence no model."""
    import gc
    import weakref

    from tango_core.models.static_decoding import clear_compiled, compiled

    class Owner:
        def step(self, model, token, slot, position, cache):
            return token

    def plain(model, token, slot, position, cache):
        return token

    owner = Owner()
    alive = weakref.ref(owner)
    first, second = compiled(owner.step), compiled(Owner().step)
    assert first.func is second.func and first.args == (owner,)
    assert compiled(plain) is compiled(plain)
    del owner, first
    gc.collect()
    assert alive() is None
    clear_compiled()


class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: 'capturing' keeps the function, a replay runs
    it again into the captured output (what a real replay does to the output's memory)."""

    captures = 0

    def __init__(self) -> None:
        self.fn = None
        self.out = None

    def replay(self) -> None:
        self.out.copy_(self.fn())


def _fake_capture(graph, fn, device, pool=None):
    _FakeGraph.captures += 1
    graph.fn, graph.out = fn, fn()
    return graph.out


class _FakeStream:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def wait_stream(self, other) -> None:
        pass


def test_graph_scheduling_captures_a_prompt_length_on_its_second_sight(checkpoints, monkeypatch) -> None:
    """The capture logic run on the CPU with CUDA's graph and stream calls faked: a padded length
    runs eagerly the first time, is captured the second, replayed after; one decoding graph per
    cache; every answer equals the growing cache's."""
    import contextlib

    from tango_core.models import static_decoding
    from tango_core.models.static_decoding import StaticDecoding

    monkeypatch.setattr(static_decoding, "capture", _fake_capture)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    _FakeGraph.captures = 0
    model, expected, _ = _pruning_onevision(checkpoints, 5)
    model.decoding = "graphs"
    model._static = StaticDecoding(model.model, model.model.config.get_text_config(decoder=True), "cpu", capture=False,
                                   pad_prompts=True)
    model._static.capture = True  # what CUDA would set
    captured = []
    for _ in range(3):
        assert torch.equal(model.decode(model.prepare(FRAMES, "What happens?"), 5)[0], expected)
        (entry,) = model._static.prompts.values()
        captured.append((entry.graph is not None, _FakeGraph.captures))
    assert captured == [(False, 1), (True, 2), (True, 2)]  # call 1: the step's graph; call 2: the prompt's


def test_prefill_graphs_are_kept_per_body_and_object() -> None:
    """Two bodies, or one method of two objects (two intra-LLM runners of other K), on one cache and
    padded length get entries of their own: a graph is never replayed for another body."""
    from tango_core.models.static_decoding import StaticDecoding

    class Runner:
        def __init__(self, scale: float) -> None:
            self.scale = scale

        def body(self, model, embeds, positions, slots, last, cache):
            return embeds.sum() * self.scale

    static = StaticDecoding(None, None, "cpu", capture=False, pad_prompts=True, prompt_quantum=8)
    cache = type("Cache", (), {"layers": []})()
    embeds = torch.ones(1, 5, 2)
    first, second = Runner(1.0), Runner(2.0)
    assert float(static.prefill(first.body, cache, embeds, torch.arange(5)[None])) == 10.0
    assert float(static.prefill(second.body, cache, embeds, torch.arange(5)[None])) == 20.0
    assert float(static.prefill(first.body, cache, embeds, torch.arange(5)[None])) == 10.0
    assert len(static.prompts) == 2

"""The SigLIP tower runner (GELU epilogue, CUDA graphs) against transformers' own tower."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import importlib.util

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from transformers import SiglipVisionConfig, SiglipVisionModel  # noqa: E402

from tango_core import TangoConfig  # noqa: E402
from tango_core.models.llava import LlavaTango  # noqa: E402
from tango_core.models.siglip_tower import SiglipTower, fused_layer, has_tanh_gelu_mlp  # noqa: E402
from tango_core.testing.tiny_llava import build_tiny_llava  # noqa: E402


def tiny_tower(hidden_act: str = "gelu_pytorch_tanh", layers: int = 3, seed: int = 0):
    config = SiglipVisionConfig(hidden_size=32, intermediate_size=72, num_hidden_layers=layers, num_attention_heads=4,
                                image_size=28, patch_size=7, hidden_act=hidden_act, vision_use_head=False, attn_implementation="sdpa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiglipVisionModel(config).eval()
    return model


def pixels(n: int = 3, size: int = 28, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_fused_layer_equals_transformers_layer_on_cpu():
    tower = tiny_tower()
    hidden = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(2))
    for layer in tower.encoder.layers:
        assert has_tanh_gelu_mlp(layer)
        assert torch.equal(fused_layer(layer, hidden)[0], layer(hidden, None))  # addmm + the same GELU on the CPU


@torch.no_grad()
def test_chained_norms_equal_transformers_layers_on_cpu():
    """A layer handed its input's norm, and asked for the next layer's norm of its output: the
    same output, and that norm equals the next layer's own layer_norm1 of it."""
    tower = tiny_tower()
    first, second = tower.encoder.layers[0], tower.encoder.layers[1]
    hidden = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(3))
    out, normed = fused_layer(first, hidden, first.layer_norm1(hidden), second.layer_norm1)
    expected = first(hidden, None)
    assert torch.equal(out, expected)
    assert torch.equal(normed, second.layer_norm1(expected))
    assert torch.equal(fused_layer(second, out, normed)[0], second(expected, None))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
@torch.no_grad()
def test_tower_with_the_fused_norm_kernel(monkeypatch):
    """The fused addition-and-norm kernel inside the tower (on the GPU where there is one, else in
    Triton's interpreter on the CPU): within float32 rounding of transformers' tower; a kernel that
    skipped the residual would not be."""
    from tango_core.models import siglip_tower

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tower = tiny_tower().to(device)
    batch = pixels().to(device)
    expected = tower(batch, output_hidden_states=True).hidden_states[3]
    calls = []
    original = siglip_tower.add_then_norm

    def counted(hidden, delta, norm):
        calls.append(hidden.shape)
        return original(hidden, delta, norm)

    monkeypatch.setattr(siglip_tower, "_fused_norm_kernel_runs", lambda tensor: True)
    monkeypatch.setattr(siglip_tower, "add_then_norm", counted)
    got = SiglipTower(tower, 3, mode="fused")(batch)
    assert len(calls) == 3 * 2 - 1  # two per layer, but the last layer's output is not normalised
    tol = 1e-5 if device.type == "cpu" else 1e-4  # the GPU's own kernels reduce in other orders too
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", ["fused", "graphs", "transformers"])
@torch.no_grad()
def test_tower_equals_transformers_hidden_states(mode):
    tower = tiny_tower()
    batch = pixels()
    for stop in (0, 2, 3):
        expected = tower(batch, output_hidden_states=True).hidden_states[stop]  # transformers' own forward
        assert torch.equal(SiglipTower(tower, stop, mode=mode)(batch), expected)


@torch.no_grad()
def test_other_activation_runs_the_layers_own_forward():
    tower = tiny_tower(hidden_act="gelu")  # the exact GELU: no tanh epilogue applies
    assert not any(has_tanh_gelu_mlp(layer) for layer in tower.encoder.layers)
    runner = SiglipTower(tower, 3, mode="fused")
    assert runner.fusable == [False, False, False]
    batch = pixels()
    assert torch.equal(runner(batch), tower(batch, output_hidden_states=True).hidden_states[3])


def test_bad_mode_and_stop_are_refused():
    tower = tiny_tower()
    with pytest.raises(ValueError, match="Unknown SigLIP tower mode 'bogus'"):
        SiglipTower(tower, 1, mode="bogus")
    with pytest.raises(ValueError, match=r"stop must be in \[0, 3\]"):
        SiglipTower(tower, 4)


@torch.no_grad()
def test_adapter_option_and_shared_runner():
    model, tokenizer, siglip = build_tiny_llava("llava_onevision")
    head_kw = dict(family="llava_onevision", num_frames=4)
    frames = np.random.default_rng(0).integers(0, 256, (4, 40, 50, 3), dtype=np.uint8)
    outputs = {}
    for mode in ("transformers", "fused", "graphs", "auto"):
        adapter = LlavaTango(model, tokenizer, tango=TangoConfig(retention_ratio=0.3), vision_blocks=mode, **head_kw)
        outputs[mode] = adapter.vision_hidden_states(adapter.preprocess(frames))
    expected = model.model.vision_tower(LlavaTango(model, tokenizer, **head_kw).preprocess(frames), output_hidden_states=True)
    for mode, out in outputs.items():
        assert torch.equal(out, expected.hidden_states[-1]), mode
    a = LlavaTango(model, tokenizer, vision_blocks="fused", **head_kw)
    b = LlavaTango(model, tokenizer, vision_blocks="fused", **head_kw)
    a.vision_hidden_states(a.preprocess(frames))
    b.vision_hidden_states(b.preprocess(frames))
    assert a._tower is b._tower  # one runner (and its graphs) per tower and mode
    with pytest.raises(ValueError, match="vision_blocks"):
        LlavaTango(model, tokenizer, vision_blocks="compiled", **head_kw)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@torch.no_grad()
def test_graphs_on_cuda_replay_the_eager_tower():
    tower = tiny_tower().cuda().half()
    runner = SiglipTower(tower, 3, mode="graphs")
    first, second = pixels(seed=3).cuda().half(), pixels(seed=4).cuda().half()
    eager = SiglipTower(tower, 3, mode="fused")
    assert torch.equal(runner(first), eager(first))  # first sight: eager
    assert runner.graphs[next(iter(runner.graphs))].graph is None
    assert torch.equal(runner(first), eager(first))  # second sight: captured
    assert runner.graphs[next(iter(runner.graphs))].graph is not None
    kept = runner(second)  # replayed with new pixels
    assert torch.equal(kept, eager(second))
    runner(first)
    assert torch.equal(kept, eager(second))  # an earlier output is not overwritten by a replay


@cuda
@torch.no_grad()
def test_gelu_epilogue_on_cuda_is_the_tanh_gelu():
    from tango_core.models.siglip_tower import gelu_epilogue_mlp

    layer = tiny_tower().cuda().encoder.layers[0]
    mlp = layer.mlp
    hidden = torch.randn(64, 32, device="cuda") * 3
    fused = gelu_epilogue_mlp(mlp, hidden)
    inner = torch.addmm(mlp.fc1.bias, hidden, mlp.fc1.weight.t())
    tanh_form = mlp.fc2(torch.nn.functional.gelu(inner, approximate="tanh"))
    exact_form = mlp.fc2(torch.nn.functional.gelu(inner))
    assert (fused - tanh_form).abs().max() < 1e-4 < (fused - exact_form).abs().max()


@torch.no_grad()
def test_upload_pieces_option():
    model, tokenizer, _ = build_tiny_llava("llava_onevision")
    with pytest.raises(ValueError, match="upload_chunk_frames must be >= 1"):
        LlavaTango(model, tokenizer, family="llava_onevision", upload_chunk_frames=0)
    frames = np.zeros((4, 40, 50, 3), dtype=np.uint8)
    assert not LlavaTango(model, tokenizer, family="llava_onevision", upload_chunk_frames=2)._streams_frames(frames)  # CPU


@cuda
@torch.no_grad()
def test_frames_uploaded_in_pieces_give_the_tower_of_all_frames():
    """On CUDA the frames go up in pieces (the tower of each piece queued before the next upload):
    the same hidden states as one upload and one tower call, up to float32 rounding; stages timed."""
    from tango_core.models.base import StageTimer

    model, tokenizer, _ = build_tiny_llava("llava_onevision")
    model = model.cuda()
    frames = np.random.default_rng(5).integers(0, 256, (5, 40, 50, 3), dtype=np.uint8)
    whole = LlavaTango(model, tokenizer, family="llava_onevision", num_frames=5, upload_chunk_frames=None)
    pieces = LlavaTango(model, tokenizer, family="llava_onevision", num_frames=5, upload_chunk_frames=2)
    assert pieces._streams_frames(frames) and not whole._streams_frames(frames)
    expected = whole.vision_hidden_states(whole.preprocess(frames))
    for _ in range(3):  # eager, captured, replayed
        timer = StageTimer("cuda")
        got = pieces.streamed_hidden_states(frames, timer)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert set(timer.times_ms()) == {"preprocess", "vit"}

"""The SigLIP tower runner (GELU epilogue, CUDA graphs) against transformers' own tower."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

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
        assert torch.equal(fused_layer(layer, hidden), layer(hidden, None))  # addmm + the same GELU on the CPU


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

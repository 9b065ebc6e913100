"""Padded gated MLPs and compiled ViT blocks: the same outputs as transformers' own forwards."""

import copy
import logging
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from tango_core import TangoConfig  # noqa: E402
from tango_core.models.fast_blocks import FastBlocks, PaddedGatedMLP  # noqa: E402
from tango_core.models.qwen2_5_vl import Qwen25VLTango  # noqa: E402
from tango_core.testing.tiny_qwen import build_tiny_qwen25vl  # noqa: E402

SMALL = {"video_min_pixels": 4 * 28 * 28}
FRAMES = np.random.default_rng(3).integers(0, 255, (8, 112, 140, 3), dtype=np.uint8)
QUESTION = "What happens?"


class GatedMLP(nn.Module):
    """An independent gated MLP: down(silu(gate(x)) * up(x)), width 70 (not a multiple of 8)."""

    def __init__(self, hidden: int = 24, width: int = 70, bias: bool = True) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, width, bias=bias)
        self.up_proj = nn.Linear(hidden, width, bias=bias)
        self.down_proj = nn.Linear(width, hidden, bias=bias)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


@pytest.mark.parametrize("bias", [True, False])
def test_padded_mlp_computes_the_same_and_keeps_the_state_dict(bias):
    torch.manual_seed(0)
    mlp = GatedMLP(bias=bias).double()
    before = copy.deepcopy(mlp.state_dict())
    x = torch.randn(5, 3, 24, dtype=torch.float64)
    expected = mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    padded = PaddedGatedMLP(mlp, multiple=32)
    assert (padded.width, padded.padded_width) == (70, 96)
    assert padded.gate_weight.shape == (96, 24) and padded.down_weight.shape == (24, 96)
    assert float(padded.gate_weight[70:].abs().sum()) == 0.0 and float(padded.down_weight[:, 70:].abs().sum()) == 0.0
    torch.testing.assert_close(padded.forward(x), expected, rtol=1e-12, atol=1e-12)
    after = mlp.state_dict()
    assert list(after) == list(before)
    for name, value in before.items():  # the parameters are views now, with their shapes and values
        assert after[name].shape == value.shape and torch.equal(after[name], value)
    torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)  # the module's own forward still works
    # Parameters replaced from outside (a load, a .to()): the padding follows them.
    with torch.no_grad():
        mlp.gate_proj.weight = nn.Parameter(mlp.gate_proj.weight.clone() * 2)
    padded.refresh()
    torch.testing.assert_close(padded.forward(x), mlp(x), rtol=1e-12, atol=1e-12)


def test_fast_blocks_install_only_inside_active():
    blocks = nn.ModuleList([nn.Sequential(), nn.Sequential()])
    blocks[0].mlp = GatedMLP()
    blocks[1].mlp = GatedMLP(width=64)  # already aligned: left alone
    fast = FastBlocks(blocks, pad_multiple=32)
    assert [p.mlp for p in fast.padded] == [blocks[0].mlp]
    with fast.active():
        assert blocks[0].mlp.forward == fast.padded[0].forward
    assert "forward" not in vars(blocks[0].mlp)


@pytest.fixture(scope="module")
def vanilla(tmp_path_factory) -> Qwen25VLTango:
    path = build_tiny_qwen25vl(str(tmp_path_factory.mktemp("fast_blocks")), seed=1)
    return Qwen25VLTango.from_pretrained(path, tango=None, dtype=torch.float32, device="cpu", **SMALL)


def _adapter(vanilla, **options) -> Qwen25VLTango:
    return Qwen25VLTango(vanilla.model, vanilla.tokenizer, TangoConfig(retention_ratio=0.25),
                         chat_template=vanilla.chat_template, **SMALL, **options)


def test_padded_vit_mlps_match_transformers(vanilla):
    """The ViT with its MLPs padded (64 -> 96 here; 3420 -> 3456 at 7B) against transformers' own
    blocks: the same embeddings and saliency to float rounding, the same kept tokens and answer."""
    exact = _adapter(vanilla, vision_blocks="transformers")
    padded = _adapter(vanilla, vision_blocks="padded")
    padded._fast_blocks = FastBlocks(vanilla.model.model.visual.blocks, pad_multiple=48)  # force a padding
    inputs = exact.prepare_inputs(FRAMES, QUESTION)
    with torch.no_grad():
        reference, reference_saliency = exact.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, True)
        got, got_saliency = padded.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, True)
    assert len(padded._fast_blocks.padded) == len(vanilla.model.model.visual.blocks)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_saliency, reference_saliency, rtol=1e-5, atol=1e-6)
    assert torch.equal(padded.prepare(FRAMES, QUESTION).keep_index, exact.prepare(FRAMES, QUESTION).keep_index)
    assert torch.equal(padded.generate(FRAMES, QUESTION, max_new_tokens=4).token_ids,
                       exact.generate(FRAMES, QUESTION, max_new_tokens=4).token_ids)
    with pytest.raises(ValueError, match="vision_blocks must be one of"):
        _adapter(vanilla, vision_blocks="fast")


def test_a_failing_compile_falls_back_with_one_warning(vanilla, monkeypatch, caplog):
    """No working compiler: the ViT runs uncompiled (the padded MLPs kept), with one log line."""

    class InductorFailure(RuntimeError):
        pass

    InductorFailure.__module__ = "torch._inductor.exc"
    calls = []

    def broken_compile(fn, *args, **kwargs):
        def run(*a, **k):
            calls.append(1)
            raise InductorFailure("no C compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    exact = _adapter(vanilla, vision_blocks="transformers")
    compiled = _adapter(vanilla, vision_blocks="compiled")
    inputs = exact.prepare_inputs(FRAMES, QUESTION)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="tango_core"):
        reference, _ = exact.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, False)
        first, _ = compiled.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, False)
        second, _ = compiled.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, False)
    assert len(calls) == 1 and compiled._fast_blocks.compile_failed
    assert sum("compiling the vision blocks failed" in r.message for r in caplog.records) == 1
    torch.testing.assert_close(first, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, reference, rtol=1e-5, atol=1e-5)
    assert all(block._compiled_call_impl is None for block in vanilla.model.model.visual.blocks)


def test_other_errors_are_not_taken_for_compile_failures(vanilla):
    compiled = _adapter(vanilla, vision_blocks="padded")
    with pytest.raises(Exception) as caught:
        compiled.encode_video(torch.zeros(3, 5), torch.tensor([[1, 2, 2]]), False)
    assert compiled._fast_blocks is not None and not compiled._fast_blocks.compile_failed
    assert "compil" not in str(caught.value)


def test_compiled_vit_blocks_match_transformers(vanilla):
    """torch.compile-d ViT blocks (inductor on the CPU here: about 30 s of compiling) against
    transformers' own: the same embeddings and saliency to float rounding, the same kept tokens;
    outside the call the blocks are uncompiled again."""
    exact = _adapter(vanilla, vision_blocks="transformers")
    compiled = _adapter(vanilla, vision_blocks="compiled")
    blocks = vanilla.model.model.visual.blocks
    compiled._fast_blocks = FastBlocks(blocks, pad_multiple=48, compiled=range(len(blocks) - 1))  # padded MLPs inside
    inputs = exact.prepare_inputs(FRAMES, QUESTION)
    frames_traced = torch._dynamo.utils.counters["stats"]["calls_captured"]
    with torch.no_grad():
        reference, reference_saliency = exact.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, True)
        got, got_saliency = compiled.encode_video(inputs.pixel_values_videos, inputs.video_grid_thw, True)
    assert not compiled._fast_blocks.compile_failed and compiled._fast_blocks.padded
    assert torch._dynamo.utils.counters["stats"]["calls_captured"] > frames_traced  # dynamo really traced the blocks
    assert sorted(compiled._fast_blocks.compiled) == list(range(len(vanilla.model.model.visual.blocks) - 1))
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_saliency, reference_saliency, rtol=1e-5, atol=1e-6)
    assert torch.equal(compiled.prepare(FRAMES, QUESTION).keep_index, exact.prepare(FRAMES, QUESTION).keep_index)
    assert all(block._compiled_call_impl is None for block in vanilla.model.model.visual.blocks)


def test_adapters_of_one_model_share_the_padding():
    """Two FastBlocks over the same blocks (two adapters of one model) share one padded storage:
    switching between them copies nothing."""
    blocks = nn.ModuleList([nn.Sequential()])
    blocks[0].mlp = GatedMLP()
    first, second = FastBlocks(blocks, pad_multiple=32), FastBlocks(blocks, pad_multiple=32)
    assert first.padded[0] is second.padded[0]
    storage = first.padded[0].gate_weight.data_ptr()
    with first.active():
        pass
    with second.active():
        pass
    assert second.padded[0].gate_weight.data_ptr() == storage

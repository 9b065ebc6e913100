"""LLaVA adapters against references that share no code with them (CPU, offline).

Every expected value here comes from transformers' own modules and processors (SigLIP's
``post_layernorm`` and ``SiglipMultiheadAttentionPoolingHead`` loaded by ``SiglipVisionModel``,
the checkpoint's ``LlavaOnevisionImageProcessorPil``, the vision tower's own forward), from
pooling written out in the test, or from literal hand-checked values: never from the adapter's
helpers (``preprocess``, ``pool_*``, ``SiglipSaliencyHead``, ``time_instruction``, ...).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from typing import Dict, List

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("av")

from transformers import SiglipVisionModel  # noqa: E402
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (  # noqa: E402
    LlavaOnevisionImageProcessorPil,
)

import tango_core.prune as prune_module  # noqa: E402
from tango_core import TangoConfig  # noqa: E402
from tango_core.intra_llm import IntraLLMConfig  # noqa: E402
from tango_core.models.base import VideoClip  # noqa: E402
from tango_core.models.llava import LlavaTango  # noqa: E402
from tango_core.models.loader import load_tango_model  # noqa: E402
from tango_core.models.qwen2_intra_llm import IntraLLMQwen2Runner  # noqa: E402
from tango_core.models.siglip_head import SiglipSaliencyHead  # noqa: E402
from tango_core.testing.tiny_llava import save_tiny_llava  # noqa: E402
from tango_core.models.video import write_video  # noqa: E402

FAMILIES = ("llava_onevision", "llava_video")
QUESTION = "What is the person doing in the video?"
NUM_FRAMES = 4
GRID = 27  # the tiny tower keeps the 27x27 patch grid of the 7B models


def textured_frames(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """(count, H, W, 3) uint8: smooth colour field, a moving bright block, noise (needs real resizing)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([110 + 70 * np.sin(xx / 6.0), 120 + 60 * np.cos(yy / 5.0), 60 + 2 * xx], -1)
    out = []
    for t in range(count):
        frame = base + rng.normal(0, 12, base.shape)
        frame[10:26, 5 + 7 * t : 21 + 7 * t] = (245, 25, 40)
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(out)


# 8 frames of 60x70 (not the tower's 54x54, not square): sampled to 4 at int(linspace(0, 7, 4)).
FRAMES = textured_frames(8, 60, 70, seed=5)
SAMPLED = [0, 2, 4, 7]  # linspace(0, 7, 4) = 0, 2.33, 4.67, 7 cast to int


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_llava_ref")
    return {family: save_tiny_llava(str(root / family), family).model for family in FAMILIES}


@pytest.fixture(scope="module")
def bases(dirs) -> Dict[str, LlavaTango]:
    return {
        family: load_tango_model(dirs[family], dtype=torch.float32, device="cpu", num_frames=NUM_FRAMES, intra_llm=IntraLLMConfig(layer=2))
        for family in FAMILIES
    }


@pytest.fixture(scope="module")
def reference_siglip(dirs) -> torch.nn.Module:
    """transformers' SigLIP vision transformer of the tiny saliency checkpoint (post_layernorm + head)."""
    model = SiglipVisionModel.from_pretrained(os.path.join(dirs["llava_onevision"], "siglip"), dtype=torch.float32)
    return getattr(model, "vision_model", model).eval()


def share(base: LlavaTango, tango, num_frames: int = NUM_FRAMES) -> LlavaTango:
    return LlavaTango(base.model, base.tokenizer, tango=tango, family=base.family, num_frames=num_frames,
                      saliency_head=base._get_saliency_head(), intra_llm=IntraLLMConfig(layer=2))


def capture_prune(monkeypatch) -> List[dict]:
    """Record the arguments the LLaVA adapter hands to tango_prune (the real one still runs)."""
    calls: List[dict] = []
    real = prune_module.tango_prune

    def recording(features, saliency, grid, timestamps=None, config=None, global_features=None):
        calls.append(dict(features=features.clone(), saliency=saliency.clone(), grid=tuple(grid),
                          timestamps=None if timestamps is None else timestamps.clone(),
                          global_features=None if global_features is None else global_features.clone()))
        return real(features, saliency, grid, timestamps=timestamps, config=config, global_features=global_features)

    monkeypatch.setattr(prune_module, "tango_prune", recording)
    return calls


# --------------------------------------------------------------------------------------------- references

def reference_pixels(directory: str, frames: np.ndarray) -> torch.Tensor:
    """(T, 3, 54, 54): the checkpoint's own image processor (PIL bicubic squash resize, /255, mean/std 0.5).

    Each frame is one image; the processor's first crop is the whole frame resized to ``size``
    (the anyres crops that follow are not used; one 54x54 pinpoint keeps them few).
    """
    processor = LlavaOnevisionImageProcessorPil.from_pretrained(directory)
    assert processor.resample == 3 and dict(processor.size) == {"height": 54, "width": 54}
    out = processor(images=list(frames), image_grid_pinpoints=[[54, 54]], return_tensors="pt")
    return out["pixel_values"][:, 0].float()


def reference_pool(maps: torch.Tensor, family: str) -> torch.Tensor:
    """(N, 27, 27, C) -> (N, L, C): OneVision bilinear 27 -> 14 (align_corners=False); LLaVA-Video 2x2
    mean over the first 26 rows and columns (floor: the last row and column are dropped)."""
    n, _, _, c = maps.shape
    if family == "llava_onevision":
        pooled = F.interpolate(maps.permute(0, 3, 1, 2), size=(14, 14), mode="bilinear", align_corners=False)
        return pooled.permute(0, 2, 3, 1).reshape(n, 196, c)
    blocks = maps[:, :26, :26].reshape(n, 13, 2, 13, 2, c)
    return blocks.mean(dim=(2, 4)).reshape(n, 169, c)


def reference_head(siglip: torch.nn.Module, hidden: torch.Tensor):
    """(attention (N, P) averaged over heads, pooled (N, D)) of transformers' head on post_layernorm(hidden).

    The attention weights come from the head's own nn.MultiheadAttention (need_weights), the
    pooled output from the head module's forward.
    """
    normed = siglip.post_layernorm(hidden)
    probe = siglip.head.probe.expand(hidden.shape[0], -1, -1)
    _, weights = siglip.head.attention(probe, normed, normed, need_weights=True, average_attn_weights=True)
    return weights[:, 0], siglip.head(normed)


# --------------------------------------------------------------------------------------------- SigLIP head

def test_saliency_head_matches_transformers_pooling_head(dirs, reference_siglip) -> None:
    """Planted bugs caught: no post_layernorm, unscaled probe query, pooled output without the MLP residual."""
    head = SiglipSaliencyHead.from_pretrained(os.path.join(dirs["llava_onevision"], "siglip"))
    generator = torch.Generator().manual_seed(3)
    # Off-centre, wide features: post_layernorm changes them a lot.
    features = 3.0 * torch.randn(3, GRID * GRID, 32, generator=generator) + torch.linspace(-2, 4, 32)
    out = head(features, with_pooled=True)
    with torch.no_grad():
        attention, pooled = reference_head(reference_siglip, features)
    assert out.attention.shape == (3, GRID * GRID) and out.pooled.shape == (3, 32)
    torch.testing.assert_close(out.attention, attention, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out.pooled, pooled, rtol=1e-4, atol=1e-5)
    # The probe attention is not uniform here, so a wrong scale or a missing norm shows.
    assert float(attention.max()) > 3.0 / (GRID * GRID)
    assert head(features).pooled is None


# --------------------------------------------------------------------------------------------- Tango's inputs

def test_pixels_match_the_checkpoints_image_processor(dirs, bases) -> None:
    """Planted bug caught: bilinear instead of bicubic resizing (frames are 60x70, not 54x54)."""
    for family in FAMILIES:
        expected = reference_pixels(dirs[family], FRAMES[SAMPLED])
        torch.testing.assert_close(bases[family].preprocess(FRAMES[SAMPLED]), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_signals_given_to_tango_match_independent_pipeline(family, dirs, bases, reference_siglip, monkeypatch) -> None:
    """Features, saliency, grid, timestamps and fastvid's G that reach tango_prune, rebuilt from
    transformers' modules. Planted bugs caught: OneVision saliency 2x2-averaged instead of
    bilinear, a wrong LLaVA-Video pooling, no post_layernorm / unscaled query in the head, G
    without the MLP residual, bilinear resizing (through the pixels the tower sees)."""
    adapter = share(bases[family], TangoConfig(retention_ratio=0.2, segmenter="fastvid"))
    calls = capture_prune(monkeypatch)
    adapter.prepare_inputs(FRAMES, QUESTION)
    assert len(calls) == 1
    got = calls[0]

    model = adapter.model
    with torch.no_grad():
        pixels = reference_pixels(dirs[family], FRAMES[SAMPLED])
        tower = model.model.vision_tower(pixels, output_hidden_states=True)
        hidden = tower.hidden_states[model.config.vision_feature_layer]  # before post_layernorm
        features = model.model.multi_modal_projector(hidden)
        attention, pooled = reference_head(reference_siglip, hidden)
    n = len(SAMPLED)
    expected_features = reference_pool(features.view(n, GRID, GRID, -1), family)
    expected_saliency = reference_pool(attention.view(n, GRID, GRID, 1), family)[..., 0]
    side = 14 if family == "llava_onevision" else 13
    assert got["grid"] == (side, side)
    torch.testing.assert_close(got["features"], expected_features, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["saliency"], expected_saliency, rtol=1e-4, atol=1e-8)
    # Not renormalised after pooling (bilinear rows do not sum to 1; the 2x2 mean drops a border).
    assert not torch.allclose(got["saliency"].sum(-1), torch.ones(n), atol=1e-3)
    torch.testing.assert_close(got["global_features"], pooled, rtol=1e-4, atol=1e-5)
    assert got["timestamps"].tolist() == [0.0, 2.0, 4.0, 7.0]  # an array is 1 fps


# --------------------------------------------------------------------------------------------- time

def grey_video(path: str, count: int, fps: int) -> str:
    """Frame i is a flat grey of 15 + 20 i (identifiable after lossy coding), 48x64."""
    levels = (15 + 20 * np.arange(count)).astype(np.uint8)
    return write_video(path, np.broadcast_to(levels[:, None, None, None], (count, 48, 64, 3)).copy(), fps=fps)


def source_frame_of(frames: np.ndarray, count: int) -> List[int]:
    """Index of the grey level nearest each decoded frame."""
    levels = 15 + 20 * np.arange(count)
    means = frames.reshape(frames.shape[0], -1).mean(axis=1)
    return [int(np.abs(levels - m).argmin()) for m in means]


def llm_text_after_video(adapter: LlavaTango, inputs) -> torch.Tensor:
    end = inputs.visual_start + inputs.visual_length
    return inputs.inputs_embeds[0, end:]


def embed_text(adapter: LlavaTango, text: str) -> torch.Tensor:
    ids = adapter.tokenizer(text, add_special_tokens=False)["input_ids"]
    return adapter.model.get_input_embeddings()(torch.tensor(ids))


@pytest.mark.parametrize("family", FAMILIES)
def test_timestamps_and_time_instruction_at_4_fps(family, bases, tmp_path, monkeypatch) -> None:
    """A 4 fps file: seconds = index / 4, not the index. Planted bugs caught: frame indices passed
    to Tango as timestamps; frame indices stated in LLaVA-Video's time instruction."""
    path = grey_video(str(tmp_path / "grey.mp4"), 11, fps=4)
    adapter = share(bases[family], TangoConfig(retention_ratio=0.2))
    calls = capture_prune(monkeypatch)
    inputs = adapter.prepare_inputs(path, QUESTION)
    # int(linspace(0, 10, 4)) = int(0, 3.33, 6.67, 10) = 0, 3, 6, 10.
    assert inputs.clip.frame_indices.tolist() == [0, 3, 6, 10]
    assert source_frame_of(inputs.clip.frames, 11) == [0, 3, 6, 10]
    assert calls[0]["timestamps"].tolist() == [0.0, 0.75, 1.5, 2.5]
    question_part = f"\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    if family == "llava_video":
        stated = (
            "\nThe video lasts for 2.75 seconds, and 4 frames are uniformly sampled from it. "
            "These frames are located at 0.00s,0.75s,1.50s,2.50s. "
            "Please answer the following questions related to this video." + question_part
        )
    else:
        stated = question_part
    assert torch.equal(llm_text_after_video(adapter, inputs), embed_text(adapter, stated))
    before = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    assert torch.equal(inputs.inputs_embeds[0, : inputs.visual_start], embed_text(adapter, before))


def test_clip_with_its_own_rate_keeps_its_times(bases, monkeypatch) -> None:
    """A VideoClip of a 5 fps source: Tango and the prompt get its seconds (index / 5)."""
    indices = np.array([0, 4, 9, 14])
    clip = VideoClip(FRAMES[:4], indices / 5.0, indices, 5.0, 15)
    adapter = share(bases["llava_video"], TangoConfig(retention_ratio=0.2))
    calls = capture_prune(monkeypatch)
    inputs = adapter.prepare_inputs(clip, QUESTION)
    torch.testing.assert_close(calls[0]["timestamps"], torch.tensor([0.0, 0.8, 1.8, 2.8]))
    stated = (
        "\nThe video lasts for 3.00 seconds, and 4 frames are uniformly sampled from it. "
        "These frames are located at 0.00s,0.80s,1.80s,2.80s. "
        f"Please answer the following questions related to this video.\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert torch.equal(llm_text_after_video(adapter, inputs), embed_text(adapter, stated))


# --------------------------------------------------------------------------------------------- r = 1

@pytest.mark.parametrize("family", FAMILIES)
def test_ratio_one_never_runs_saliency_or_tango(family, bases, monkeypatch) -> None:
    """At r = 1.0 the SigLIP head, tango_prune and the intra-LLM runner are never called."""
    def refuse(*args, **kwargs):
        raise AssertionError("called at retention_ratio=1.0")

    adapter = share(bases[family], TangoConfig(retention_ratio=1.0), num_frames=2)
    monkeypatch.setattr(SiglipSaliencyHead, "forward", refuse)
    monkeypatch.setattr(prune_module, "tango_prune", refuse)
    monkeypatch.setattr(IntraLLMQwen2Runner, "prefill", refuse)
    generation = adapter.generate(FRAMES, QUESTION, max_new_tokens=2)
    per_frame = 196 if family == "llava_onevision" else 169
    assert generation.stats.visual_tokens_before == 2 * per_frame
    assert generation.stats.segments is None

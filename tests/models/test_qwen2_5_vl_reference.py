"""Qwen2.5-VL adapter against references that share no code with it (CPU, offline).

Expected values come from transformers' Qwen2-VL video processor built from the checkpoint's
saved ``video_preprocessor_config.json``, torchvision's resize (what qwen-vl-utils calls),
qwen-vl-utils' ``fetch_video`` itself when installed, the model's own ``get_rope_index``, or
literal hand-checked numbers; never from the adapter's helpers (``smart_resize``,
``resize_frames``, ``qwen_frame_indices``, ``patch_timestamps``, ``decode_positions``, ...).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from typing import List

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("av")

import tango_core.models.qwen2_5_vl as qwen_module  # noqa: E402
import tango_core.prune as prune_module  # noqa: E402
from tango_core import TangoConfig  # noqa: E402
from tango_core.models.base import VideoClip  # noqa: E402
from tango_core.models.qwen2_5_vl import Qwen25VLTango  # noqa: E402
from tango_core.testing.tiny_qwen import build_tiny_qwen25vl  # noqa: E402
from tango_core.models.video import write_video  # noqa: E402

QUESTION = "What is happening in the video? Answer with the option's letter."
MIN_PIXELS = 4 * 28 * 28  # small frames stay small (qwen-vl-utils' min_pixels of the video)


def textured_frames(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """(count, H, W, 3) uint8 with edges and noise, so resampling details show in every pixel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([120 + 80 * np.sin(xx / 5.0), 110 + 70 * np.cos(yy / 4.0), 40 + 1.5 * xx], -1)
    out = []
    for t in range(count):
        frame = base + rng.normal(0, 15, base.shape)
        frame[20:50, 8 + 9 * t : 38 + 9 * t] = (250, 20, 30)
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return build_tiny_qwen25vl(str(tmp_path_factory.mktemp("tiny_qwen_ref")), seed=0)


@pytest.fixture(scope="module")
def vanilla(model_dir) -> Qwen25VLTango:
    return Qwen25VLTango.from_pretrained(model_dir, tango=None, dtype=torch.float32, device="cpu", video_min_pixels=MIN_PIXELS)


def with_tango(base: Qwen25VLTango, ratio: float) -> Qwen25VLTango:
    return Qwen25VLTango(base.model, base.tokenizer, TangoConfig(retention_ratio=ratio), chat_template=base.chat_template,
                         video_min_pixels=MIN_PIXELS)


def video_processor(model_dir: str):
    pytest.importorskip("torchvision")  # transformers' video processors run on torchvision
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    processor = Qwen2VLVideoProcessor.from_pretrained(model_dir)
    assert processor.size["shortest_edge"] == 56 * 56 and processor.resample == 3
    return processor


def processed(processor, video: torch.Tensor):
    """pixel_values_videos and video_grid_thw of one (T, 3, H, W) video tensor with values in [0, 255]."""
    out = processor(videos=[video], return_tensors="pt", cap_pixels_per_frame=False)
    return out["pixel_values_videos"].float(), out["video_grid_thw"]


def capture_prune(monkeypatch) -> List[dict]:
    """Record what the Qwen adapter hands to tango_prune (the real one still runs)."""
    calls: List[dict] = []
    real = prune_module.tango_prune

    def recording(features, saliency, grid, timestamps=None, config=None, global_features=None):
        calls.append(dict(grid=tuple(grid), timestamps=timestamps.clone(), num_frames=features.shape[0]))
        return real(features, saliency, grid, timestamps, config, global_features)

    monkeypatch.setattr(prune_module, "tango_prune", recording)
    return calls


# --------------------------------------------------------------------------------------------- pixels

def test_pixels_match_torchvision_resize_and_video_processor(model_dir, vanilla) -> None:
    """Frames of 100x130 px: qwen-vl-utils resizes them to 112x140 with torchvision (bicubic,
    antialiased, uint8 in and out, so rounded), then the processor normalises and patchifies.
    Planted bug caught: the first resize not rounded to uint8 values."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    frames = textured_frames(4, 100, 130, seed=7)
    clip = VideoClip(frames, np.arange(4) / 4.0, np.arange(4), 4.0, 4)
    inputs = vanilla.prepare_inputs(clip, QUESTION)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # uint8
    resized = TF.resize(video, [112, 140], interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert resized.dtype == torch.uint8
    expected, grid = processed(video_processor(model_dir), resized)
    assert grid.tolist() == [[2, 8, 10]] and inputs.video_grid_thw.tolist() == [[2, 8, 10]]
    torch.testing.assert_close(inputs.pixel_values_videos, expected, rtol=0, atol=1e-5)


def test_video_file_matches_qwen_vl_utils_fetch_video(model_dir, vanilla, tmp_path, monkeypatch) -> None:
    """The same file through qwen-vl-utils' fetch_video (decord) and the processor: same frames,
    same pixel rows. Planted bugs caught: indices floored, the first resize not rounded."""
    pytest.importorskip("decord")
    vision_process = pytest.importorskip("qwen_vl_utils.vision_process")
    monkeypatch.setattr(vision_process, "get_video_reader_backend", lambda: "decord")
    path = write_video(str(tmp_path / "textured.mp4"), textured_frames(12, 100, 130, seed=8), fps=4)
    video, metadata = vision_process.fetch_video({"video": path, "min_pixels": MIN_PIXELS}, return_video_metadata=True)
    assert list(metadata["frames_indices"]) == [0, 2, 4, 7, 9, 11]
    inputs = vanilla.prepare_inputs(path, QUESTION)
    assert inputs.clip.frame_indices.tolist() == [0, 2, 4, 7, 9, 11]
    expected, grid = processed(video_processor(model_dir), video)
    assert torch.equal(inputs.video_grid_thw, grid)
    torch.testing.assert_close(inputs.pixel_values_videos, expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------- frames

def test_frame_indices_round_and_times_reach_tango(vanilla, tmp_path, monkeypatch) -> None:
    """12 frames at 4 fps -> 3 s at 2 fps = 6 frames at round(linspace(0, 11, 6)) =
    round(0, 2.2, 4.4, 6.6, 8.8, 11) = 0, 2, 4, 7, 9, 11 (flooring gives 0, 2, 4, 6, 8, 11).
    Planted bugs caught: indices floored; frame indices used as seconds."""
    levels = (15 + 20 * np.arange(12)).astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (12, 112, 140, 3)).copy()
    path = write_video(str(tmp_path / "grey.mp4"), frames, fps=4)
    calls = capture_prune(monkeypatch)
    adapter = with_tango(vanilla, 0.2)
    inputs = adapter.prepare_inputs(path, QUESTION)
    prefill = adapter.prepare(path, QUESTION)
    clip = inputs.clip
    assert clip.frame_indices.tolist() == [0, 2, 4, 7, 9, 11]
    decoded = clip.frames.reshape(6, -1).mean(axis=1)
    assert [int(np.abs(levels - m).argmin()) for m in decoded] == [0, 2, 4, 7, 9, 11]
    assert np.allclose(clip.timestamps, [0.0, 0.5, 1.0, 1.75, 2.25, 2.75])
    # 6 frames -> 3 temporal patches at frame positions 0, 2.5, 5: times 0, (1.0 + 1.75) / 2, 2.75.
    assert len(calls) == 1 and calls[0]["num_frames"] == 3 and calls[0]["grid"] == (4, 5)
    assert calls[0]["timestamps"].tolist() == [0.0, 1.375, 2.75]
    assert prefill.timestamps.tolist() == [0.0, 1.375, 2.75]


# --------------------------------------------------------------------------------------------- decoding

def test_decode_positions_continue_the_unpruned_sequence(vanilla) -> None:
    """The M-RoPE ids the language model receives for each decoded token equal those the unpruned
    sequence gives it: get_rope_index of prompt + generated tokens, and S + t + rope_deltas."""
    pruned = with_tango(vanilla, 0.1)
    pruned.stop_token_ids = []  # never stop early: every run decodes the same number of steps
    frames = textured_frames(8, 112, 140, seed=1)
    inputs = pruned.prepare_inputs(frames, QUESTION)
    seen: List[torch.Tensor] = []

    def hook(module, args, kwargs):
        seen.append(kwargs["position_ids"].detach().clone())

    handle = pruned.model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        tokens = pruned.generate(frames, QUESTION, max_new_tokens=4).token_ids
    finally:
        handle.remove()
    decode_calls = seen[1:]
    assert tokens.numel() == 4 and len(decode_calls) == 3
    assert seen[0].shape[-1] < inputs.input_ids.shape[1]  # the prefill really was pruned

    length = inputs.input_ids.shape[1]
    fed = tokens[:-1][None]  # every generated token but the last is fed back
    ids = torch.cat([inputs.input_ids, fed], dim=1)
    mm_types = torch.cat([inputs.mm_token_type_ids, torch.zeros_like(fed, dtype=inputs.mm_token_type_ids.dtype)], dim=1)
    core = pruned.model.model
    with torch.no_grad():
        positions, _ = core.get_rope_index(ids, mm_token_type_ids=mm_types, video_grid_thw=inputs.video_grid_thw,
                                           second_per_grid_ts=inputs.second_per_grid_ts, attention_mask=torch.ones_like(ids))
        _, deltas = core.get_rope_index(inputs.input_ids, mm_token_type_ids=inputs.mm_token_type_ids,
                                        video_grid_thw=inputs.video_grid_thw, second_per_grid_ts=inputs.second_per_grid_ts,
                                        attention_mask=inputs.attention_mask)
    for step, got in enumerate(decode_calls):
        assert got.shape == (3, 1, 1)
        expected = positions[:, :, length + step : length + step + 1]
        assert torch.equal(got, expected)
        assert got.flatten().tolist() == [length + step + int(deltas)] * 3
    # The video's temporal positions are compressed (2 per temporal patch), so the text after it
    # sits well below its index: the ids are absolute positions, not counts of tokens.
    assert int(deltas) < 0


# --------------------------------------------------------------------------------------------- r = 1

class CalledAtRatioOne(Exception):
    """Raised by the stand-ins of the saliency and pruning functions."""


def test_ratio_one_never_runs_saliency_or_tango(vanilla, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise CalledAtRatioOne("called at retention_ratio=1.0")

    monkeypatch.setattr(qwen_module._SaliencyProbe, "__init__", refuse)
    monkeypatch.setattr(qwen_module, "merged_token_saliency", refuse)
    monkeypatch.setattr(prune_module, "tango_prune", refuse)
    generation = with_tango(vanilla, 1.0).generate(textured_frames(4, 112, 140, seed=2), QUESTION, max_new_tokens=1)
    assert generation.stats.visual_tokens_after == generation.stats.visual_tokens_before

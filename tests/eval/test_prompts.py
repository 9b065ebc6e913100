"""VLMEvalKit's prompts as the harness builds them: LongVideoBench without decoding frames."""

from __future__ import annotations

import copy

import pytest


def test_longvideobench_video_prompt_is_vlmevalkits_without_decoding(datasets, monkeypatch) -> None:
    """The message is VLMEvalKit's own, built without opening the video (decord made to fail)."""
    import decord

    from tango_eval.vlmeval_env import skip_unused_frame_decoding

    original = datasets["LongVideoBench"]
    expected = [original.build_prompt(row, video_llm=True) for row in range(len(original))]  # decodes
    patched = copy.copy(original)
    skip_unused_frame_decoding(patched)
    skip_unused_frame_decoding(patched)  # applied twice: still one wrapper

    def no_decoding(*args, **kwargs):
        raise AssertionError("the video was opened")

    monkeypatch.setattr(decord, "VideoReader", no_decoding)
    assert [patched.build_prompt(row, video_llm=True) for row in range(len(patched))] == expected
    assert [item["type"] for item in expected[0]] == ["text", "video", "text"]
    with pytest.raises(AssertionError, match="the video was opened"):  # image prompts still decode
        patched.build_prompt(0, video_llm=False)
    with pytest.raises(AssertionError, match="the video was opened"):  # the dataset itself is untouched
        original.build_prompt(0, video_llm=True)


def test_other_datasets_are_left_alone(datasets) -> None:
    from tango_eval.vlmeval_env import skip_unused_frame_decoding

    for name in ("Video-MME", "MVBench", "MLVU"):
        dataset = copy.copy(datasets[name])
        before = getattr(dataset, "save_video_frames", None)
        skip_unused_frame_decoding(dataset)
        assert getattr(dataset, "save_video_frames", None) == before


def test_runner_builds_longvideobench_with_the_workaround(demo) -> None:
    from tango_eval.benchmarks import BENCHMARKS, dataset_entry
    from tango_eval.runner import build_dataset

    dataset = build_dataset(dataset_entry(BENCHMARKS["LongVideoBench"], nframe=8))
    assert getattr(dataset.save_video_frames, "_tango_skips", False)

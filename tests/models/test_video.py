"""Video decoding and sampling (tango_core.models.video): CPU, offline, small generated videos."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from typing import List

import numpy as np
import pytest

av = pytest.importorskip("av")

from tango_core.models.base import VideoClip  # noqa: E402
from tango_core.models.video import (  # noqa: E402
    write_video,
    available_backends,
    probe_video,
    read_frames,
    sample_uniform,
    to_clip,
    uniform_indices,
)

NUM_FRAMES, FPS, HEIGHT, WIDTH = 23, 10, 48, 64
BACKENDS: List[str] = [b for b in ("av", "cv2") if b in available_backends()]


def write_grey_video(path: str, num_frames: int = NUM_FRAMES, fps: int = FPS, gop: int = 12) -> None:
    """MPEG-4 video whose frame i is a flat grey of value 10 * i (mod 250)."""
    levels = (10 * np.arange(num_frames) % 250).astype(np.uint8)
    write_video(path, np.broadcast_to(levels[:, None, None, None], (num_frames, HEIGHT, WIDTH, 3)), fps, gop_size=gop)


@pytest.fixture(scope="module")
def video_path(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("video") / "clip.mp4")
    write_grey_video(path)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe_and_uniform_sampling(video_path: str, backend: str) -> None:
    assert probe_video(video_path, backend) == (NUM_FRAMES, float(FPS))
    clip = sample_uniform(video_path, 5, backend=backend)
    expected = np.linspace(0, NUM_FRAMES - 1, 5).astype(np.int64)  # [0, 5, 11, 16, 22]
    np.testing.assert_array_equal(clip.frame_indices, expected)
    np.testing.assert_allclose(clip.timestamps, expected / FPS)
    assert clip.frames.shape == (5, HEIGHT, WIDTH, 3) and clip.frames.dtype == np.uint8
    # Lossy codec: the flat grey comes back within a few levels.
    np.testing.assert_allclose(clip.frames.reshape(5, -1).mean(1), 10 * expected, atol=6)
    assert clip.num_source_frames == NUM_FRAMES and clip.source_fps == FPS
    assert clip.duration == pytest.approx(NUM_FRAMES / FPS)


def test_backends_agree_and_read_frames_keeps_order(video_path: str) -> None:
    frames = read_frames(video_path, [7, 2, 7], backend=BACKENDS[0])
    assert frames.shape == (3, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(frames[0], frames[2])
    assert frames[0].mean() > frames[1].mean()
    if len(BACKENDS) > 1:
        other = read_frames(video_path, [7, 2, 7], backend=BACKENDS[1])
        assert np.abs(other.astype(int) - frames.astype(int)).mean() < 3


def test_seeking_matches_sequential_decoding(tmp_path) -> None:
    """Sparse frames of a long video are read by keyframe seeks; they equal a full sequential decode."""
    from tango_core.models import video as video_module

    path = str(tmp_path / "long.mp4")
    write_grey_video(path, num_frames=700, fps=30)
    indices = uniform_indices(700, 8)
    assert indices[-1] >= video_module.SEEK_MIN_FRAMES and indices[-1] > video_module.SEEK_SPARSITY * 8
    with av.open(path) as container:
        sequential = video_module._av_read_sequential(container, container.streams.video[0], indices)
    clip = sample_uniform(path, 8, backend="av")  # takes the seeking path
    np.testing.assert_array_equal(clip.frames, np.stack(sequential))
    np.testing.assert_allclose(clip.frames.reshape(8, -1).mean(1), 10 * indices % 250, atol=6)


def test_uniform_indices() -> None:
    np.testing.assert_array_equal(uniform_indices(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(uniform_indices(3, 5), [0, 0, 1, 1, 2])


def test_to_clip_sources(video_path: str) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (6, 8, 10, 3), dtype=np.uint8)
    clip = to_clip(frames, fps=2.0)
    np.testing.assert_array_equal(clip.frames, frames)
    np.testing.assert_allclose(clip.timestamps, np.arange(6) / 2.0)
    assert clip.duration == 3.0

    resampled = to_clip(frames, num_frames=3)
    np.testing.assert_array_equal(resampled.frame_indices, [0, 2, 5])
    np.testing.assert_array_equal(resampled.frames, frames[[0, 2, 5]])

    from_list = to_clip(list(frames))
    np.testing.assert_array_equal(from_list.frames, frames)

    assert to_clip(clip) is clip
    again = to_clip(clip, num_frames=2)
    np.testing.assert_array_equal(again.frame_indices, [0, 5])
    np.testing.assert_allclose(again.timestamps, [0.0, 2.5])

    from_path = to_clip(video_path, num_frames=4)
    assert isinstance(from_path, VideoClip) and from_path.frames.shape[0] == 4
    every = to_clip(video_path)
    assert every.frames.shape[0] == NUM_FRAMES
    at_rate = to_clip(video_path, fps=2.0)  # 2.3 s at 2 fps -> 5 frames
    assert at_rate.frames.shape[0] == 5


def test_missing_file_message(tmp_path) -> None:
    missing = str(tmp_path / "nope.mp4")
    with pytest.raises(FileNotFoundError, match="Video file not found.*nope.mp4"):
        to_clip(missing, num_frames=4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_and_empty_files(tmp_path, backend: str) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 50)
    with pytest.raises(ValueError, match="Could not decode video.*re-encode"):
        probe_video(str(garbage), backend)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty \\(0 bytes\\)"):
        sample_uniform(str(empty), 4, backend=backend)
    with pytest.raises(ValueError, match="not a regular file"):
        probe_video(str(tmp_path), backend)


def test_truncated_file(tmp_path, video_path: str) -> None:
    data = open(video_path, "rb").read()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="(Could not decode|no decodable frames|fewer decodable frames)"):
        sample_uniform(str(truncated), 4, backend="av")


def test_zero_frame_video(tmp_path) -> None:
    path = str(tmp_path / "zero.mkv")
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        container.start_encoding()  # header only: a container with a video stream and no frame
        for packet in stream.encode():
            container.mux(packet)
    assert os.path.getsize(path) > 0
    with pytest.raises(ValueError, match="(no decodable frames|Could not decode)"):
        to_clip(path, num_frames=4)


def test_bad_arrays() -> None:
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        to_clip(np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        to_clip(np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="zero frames"):
        to_clip(np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="zero frames"):
        to_clip([])
    with pytest.raises(ValueError, match="same shape"):
        to_clip([np.zeros((8, 8, 3), np.uint8), np.zeros((4, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="Unsupported video source"):
        to_clip(42)  # type: ignore[arg-type]

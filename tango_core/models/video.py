"""Video decoding and frame sampling shared by every model family (spec section 5).

Backends, tried in this order unless one is named: decord (what the reference uses), PyAV
(``av``), OpenCV (``cv2``). Frames come back as RGB uint8 arrays of shape (T, H, W, 3).
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .base import VideoClip, VideoSource

BACKENDS: Tuple[str, ...] = ("decord", "av", "cv2")
# PyAV seeks (instead of decoding everything) when the last wanted frame is at least this far in
# and the wanted frames are this sparse: hour-long benchmark videos need 32-64 frames only.
SEEK_MIN_FRAMES = 600
SEEK_SPARSITY = 30

_REENCODE_HINT = (
    "The file may be truncated, corrupt or in a codec this backend cannot read; re-encode it "
    "(e.g. `ffmpeg -i in.mp4 -c:v libx264 -pix_fmt yuv420p out.mp4`) or install another backend "
    "(decord, av or opencv-python-headless)."
)


def available_backends() -> Tuple[str, ...]:
    """Installed decoding backends, in order of preference."""
    return tuple(name for name in BACKENDS if importlib.util.find_spec(name) is not None)


def _pick_backend(backend: Optional[str]) -> str:
    """Return ``backend`` if usable, else the first installed one."""
    installed = available_backends()
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"Unknown video backend {backend!r}; choose one of {BACKENDS}.")
        if backend not in installed:
            raise ValueError(f"Video backend {backend!r} is not installed; installed: {installed or 'none'}.")
        return backend
    if not installed:
        raise ValueError("No video decoding backend is installed: `pip install av` (or decord, or opencv-python-headless).")
    return installed[0]


def _check_path(path: str) -> str:
    """Resolve ``path`` and raise a clear error when it is not a readable file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Video file not found: {path!r}. Check the path (relative paths are taken from {os.getcwd()!r}).")
    if not os.path.isfile(path):
        raise ValueError(f"Video path {path!r} is not a regular file; pass the path of a video file.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"Video file {path!r} is empty (0 bytes). " + _REENCODE_HINT)
    return path


def _valid_fps(fps: Optional[float]) -> float:
    """A usable frame rate: ``fps`` if finite and positive, else 1.0 (timestamps then count frames)."""
    if fps is None:
        return 1.0
    fps = float(fps)
    return fps if math.isfinite(fps) and fps > 0 else 1.0


# ---------------------------------------------------------------------------------------------
# Backends: each has probe(path) -> (num_frames, fps) and read(path, sorted_unique_indices) -> list
# of (H, W, 3) uint8 arrays, in the order of the indices.


def _decord_probe(path: str) -> Tuple[int, float]:
    import decord

    reader = decord.VideoReader(path, num_threads=1)
    return len(reader), float(reader.get_avg_fps())


def _decord_read(path: str, indices: np.ndarray) -> List[np.ndarray]:
    import decord

    reader = decord.VideoReader(path, num_threads=1)
    if len(indices) and int(indices[-1]) >= len(reader):
        raise IndexError(int(indices[-1]))
    batch = reader.get_batch(indices.tolist()).asnumpy()
    return list(batch)


def _av_probe(path: str) -> Tuple[int, float]:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            return 0, 1.0
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 1.0
        count = int(stream.frames or 0)
        if count <= 0:  # container does not store the count: decode to count
            count = sum(1 for _ in container.decode(stream))
    return count, fps


def _av_read(path: str, indices: np.ndarray) -> List[np.ndarray]:
    """Sequential decode for dense requests; one keyframe seek per frame for sparse ones in long videos."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        last = int(indices[-1]) if len(indices) else -1
        rate = stream.average_rate or stream.guessed_rate
        sparse = last >= SEEK_MIN_FRAMES and last > SEEK_SPARSITY * len(indices)
        if sparse and rate and stream.time_base:
            return _av_read_seek(container, stream, indices, float(rate))
        return _av_read_sequential(container, stream, indices)


def _av_read_sequential(container, stream, indices: np.ndarray) -> List[np.ndarray]:
    """Decode from the start up to the last wanted frame, keeping the wanted ones (exact frame counting)."""
    wanted = set(int(i) for i in indices)
    last = int(indices[-1]) if len(indices) else -1
    found: Dict[int, np.ndarray] = {}
    for position, frame in enumerate(container.decode(stream)):
        if position in wanted:
            found[position] = frame.to_ndarray(format="rgb24")
        if position >= last:
            break
    return _in_order(found, indices)


def _av_read_seek(container, stream, indices: np.ndarray, fps: float) -> List[np.ndarray]:
    """Frame ``i`` = first frame whose time is >= i / fps (minus half a frame), reached by seeking to the
    keyframe before it. Exact for constant-frame-rate video."""
    time_base = float(stream.time_base)
    start = int(stream.start_time or 0)
    found: Dict[int, np.ndarray] = {}
    for index in indices:
        target = start + int(round(int(index) / fps / time_base))
        slack = int(0.5 / fps / time_base)
        container.seek(target, stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is not None and frame.pts >= target - slack:
                found[int(index)] = frame.to_ndarray(format="rgb24")
                break
    return _in_order(found, indices)


def _cv2_probe(path: str) -> Tuple[int, float]:
    import cv2

    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise ValueError("OpenCV could not open the file")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        if count <= 0:
            count = 0
            while capture.grab():
                count += 1
    finally:
        capture.release()
    return count, fps


def _cv2_read(path: str, indices: np.ndarray) -> List[np.ndarray]:
    import cv2

    wanted = set(int(i) for i in indices)
    last = int(indices[-1]) if len(indices) else -1
    found: Dict[int, np.ndarray] = {}
    capture = cv2.VideoCapture(path)
    try:
        position = 0
        while position <= last and capture.grab():
            if position in wanted:
                ok, frame = capture.retrieve()
                if ok:
                    found[position] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            position += 1
    finally:
        capture.release()
    return _in_order(found, indices)


def _in_order(found: Dict[int, np.ndarray], indices: np.ndarray) -> List[np.ndarray]:
    """Decoded frames in the order of ``indices``; IndexError(index) for the first one not decoded."""
    missing = [int(i) for i in indices if int(i) not in found]
    if missing:
        raise IndexError(missing[0])
    return [found[int(i)] for i in indices]


_PROBES: Dict[str, Callable[[str], Tuple[int, float]]] = {"decord": _decord_probe, "av": _av_probe, "cv2": _cv2_probe}
_READERS: Dict[str, Callable[[str, np.ndarray], List[np.ndarray]]] = {"decord": _decord_read, "av": _av_read, "cv2": _cv2_read}


# ---------------------------------------------------------------------------------------------
# Public API


def probe_video(path: str, backend: Optional[str] = None) -> Tuple[int, float]:
    """Number of frames and average frame rate (frames per second) of the video at ``path``.

    Raises FileNotFoundError for a missing file and ValueError for an undecodable file or one
    without frames.
    """
    path = _check_path(path)
    name = _pick_backend(backend)
    try:
        count, fps = _PROBES[name](path)
    except (FileNotFoundError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:  # each backend raises its own error types
        raise ValueError(f"Could not decode video {path!r} with {name}: {error}. " + _REENCODE_HINT) from error
    if count <= 0:
        raise ValueError(
            f"Video {path!r} has no decodable frames ({name} found 0). " + _REENCODE_HINT
        )
    return int(count), _valid_fps(fps)


def read_frames(path: str, indices: Sequence[int], backend: Optional[str] = None) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed): (T, H, W, 3) uint8 RGB."""
    path = _check_path(path)
    name = _pick_backend(backend)
    index_array = np.asarray(indices, dtype=np.int64).reshape(-1)
    if index_array.size == 0:
        raise ValueError("read_frames needs at least one frame index.")
    if index_array.min() < 0:
        raise ValueError(f"Frame indices must be non-negative, got {int(index_array.min())}.")
    unique = np.unique(index_array)
    try:
        decoded = _READERS[name](path, unique)
    except IndexError as error:
        raise ValueError(
            f"Video {path!r} has fewer decodable frames than requested (frame {error.args[0]} is missing; "
            f"{name} decoded fewer than its header announces). " + _REENCODE_HINT
        ) from error
    except (FileNotFoundError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:
        raise ValueError(f"Could not decode video {path!r} with {name}: {error}. " + _REENCODE_HINT) from error
    stacked = np.stack([np.ascontiguousarray(frame, dtype=np.uint8) for frame in decoded])
    position = np.searchsorted(unique, index_array)
    return stacked[position]


def uniform_indices(total: int, num_frames: int) -> np.ndarray:
    """``linspace(0, total - 1, num_frames)`` cast to int (the reference's sampling): (num_frames,) int64."""
    if total <= 0:
        raise ValueError(f"Cannot sample from a video with {total} frames.")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}.")
    return np.linspace(0, total - 1, num_frames).astype(np.int64)


def sample_uniform(source: "str | np.ndarray", num_frames: int, fps: Optional[float] = None, backend: Optional[str] = None) -> VideoClip:
    """Sample ``num_frames`` frames uniformly from a video file or a (T, H, W, 3) uint8 array.

    Timestamps are ``index / average_fps`` seconds; ``fps`` sets the rate of an array (default 1).
    """
    if isinstance(source, np.ndarray):
        frames = check_frames(source)
        rate = _valid_fps(fps)
        indices = uniform_indices(frames.shape[0], num_frames)
        return VideoClip(frames[indices], indices / rate, indices, rate, frames.shape[0])
    total, rate = probe_video(source, backend)
    indices = uniform_indices(total, num_frames)
    frames = read_frames(source, indices, backend)
    return VideoClip(frames, indices.astype(np.float64) / rate, indices, rate, total)


def sample_fps(path: str, target_fps: float, max_frames: Optional[int] = None, backend: Optional[str] = None) -> VideoClip:
    """Sample a video file at about ``target_fps`` frames per second (at least one frame)."""
    if not (target_fps > 0):
        raise ValueError(f"fps must be positive, got {target_fps!r}.")
    total, rate = probe_video(path, backend)
    count = max(1, int(round(total / rate * target_fps)))
    if max_frames is not None:
        count = min(count, int(max_frames))
    return sample_uniform(path, min(count, total), backend=backend)


def check_frames(frames: np.ndarray) -> np.ndarray:
    """Validate a (T, H, W, 3) uint8 RGB array and return it contiguous."""
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"Frames must be a numpy array, got {type(frames).__name__}.")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"Frames must have shape (T, H, W, 3) (RGB, channels last), got {frames.shape}; "
            "a single image needs a leading frame axis (frames[None])."
        )
    if frames.dtype != np.uint8:
        raise ValueError(
            f"Frames must be uint8 RGB in [0, 255], got dtype {frames.dtype}; convert with "
            "(frames * 255).round().clip(0, 255).astype(np.uint8) if they are floats in [0, 1]."
        )
    if frames.shape[0] == 0:
        raise ValueError("The video has zero frames; pass at least one frame.")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"Frames have an empty spatial size {frames.shape[1:3]}.")
    return np.ascontiguousarray(frames)


def to_clip(source: VideoSource, num_frames: Optional[int] = None, fps: Optional[float] = None, backend: Optional[str] = None) -> VideoClip:
    """Turn a path, a (T, H, W, 3) uint8 array, a list of (H, W, 3) frames or a VideoClip into a clip.

    Paths: ``num_frames`` frames uniformly (the LLaVA way); else about ``fps`` frames per second;
    else every frame. Arrays and lists: ``fps`` is their frame rate (default 1.0) and
    ``num_frames``, when given and different from T, resamples them uniformly. A VideoClip is
    returned as is unless ``num_frames`` asks for another count (then resampled, keeping its
    timestamps).
    """
    if isinstance(source, VideoClip):
        frames = check_frames(source.frames)
        if num_frames is None or num_frames == frames.shape[0]:
            return source
        pick = uniform_indices(frames.shape[0], num_frames)
        return VideoClip(
            frames[pick],
            np.asarray(source.timestamps)[pick],
            np.asarray(source.frame_indices)[pick],
            source.source_fps,
            source.num_source_frames,
        )
    if isinstance(source, (list, tuple)):
        if len(source) == 0:
            raise ValueError("The video has zero frames (empty frame list); pass at least one frame.")
        shapes = {np.shape(frame) for frame in source}
        if len(shapes) != 1:
            raise ValueError(f"All frames must have the same shape (H, W, 3), got {sorted(shapes)}.")
        source = np.stack([np.asarray(frame) for frame in source])
    if isinstance(source, np.ndarray):
        frames = check_frames(source)
        rate = _valid_fps(fps)
        if num_frames is not None and num_frames != frames.shape[0]:
            return sample_uniform(frames, num_frames, fps=rate)
        indices = np.arange(frames.shape[0], dtype=np.int64)
        return VideoClip(frames, indices / rate, indices, rate, frames.shape[0])
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if num_frames is not None:
            return sample_uniform(path, num_frames, backend=backend)
        if fps is not None:
            return sample_fps(path, fps, backend=backend)
        total, _ = probe_video(path, backend)
        return sample_uniform(path, total, backend=backend)
    raise ValueError(
        f"Unsupported video source of type {type(source).__name__}; pass a file path, a (T, H, W, 3) "
        "uint8 array, a list of (H, W, 3) uint8 frames or a VideoClip."
    )


def write_video(path: str, frames: np.ndarray, fps: float, gop_size: Optional[int] = None) -> str:
    """Encode (T, H, W, 3) uint8 RGB frames as an MPEG-4 video (tests, demos, benchmarks). Returns ``path``.

    PyAV when installed, else OpenCV's writer (``gop_size`` is then the codec's default). H and W
    must be even (yuv420p). ``gop_size``: frames between keyframes (codec default if None).
    """
    frames = check_frames(frames)
    try:
        import av
    except ImportError:
        return _write_video_cv2(path, frames, fps)
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=int(round(fps)))
        stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
        stream.pix_fmt = "yuv420p"
        if gop_size is not None:
            stream.codec_context.gop_size = gop_size
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _write_video_cv2(path: str, frames: np.ndarray, fps: float) -> str:
    """``write_video`` through OpenCV (MPEG-4 part 2, the same codec as the PyAV path)."""
    import cv2

    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), float(round(fps)), (int(frames.shape[2]), int(frames.shape[1])))
    if not writer.isOpened():
        raise ValueError(f"OpenCV cannot write {path!r}; install PyAV (pip install av).")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path

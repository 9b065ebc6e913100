"""Generated demo benchmarks, written in the on-disk formats of the four paper benchmarks.

**These are generated demo data, not the benchmarks.** Each "benchmark" holds a handful of clips
of a few seconds (64x96 pixels, 8 fps, a few tens of kB) showing coloured squares that move over
a smooth background, with multiple-choice questions about them (the square's colour, its motion
direction, how many squares move) whose answer is known by construction. They exist so that the
harness, VLMEvalKit's dataset classes and its scoring run end to end offline, in tests, CI and
``--demo`` sweeps; accuracies on them say nothing about the real benchmarks.

Each benchmark is written into the Hugging Face hub cache of ``data_root``
(:func:`tango_eval.vlmeval_env.hub_cache_dir`) in exactly the layout and raw format that
VLMEvalKit 0.0.20's own classes read (``VideoMME(use_subtitle=False)``, ``MVBench_MP4``,
``MLVU_MCQ``, ``LongVideoBench(use_subtitle=False)``)::

    datasets--<org>--<name>/refs/<branch>          40-hex snapshot name, no newline
    datasets--<org>--<name>/snapshots/<hash>/      the files below + tango_demo.json (manifest)

* Video-MME (``lmms-lab/Video-MME``): ``videomme/test-00000-of-00001.parquet`` (columns of the
  real release; ``options`` are ``"A. ..."`` strings, ``answer`` a letter A-D),
  ``video/<videoID>.mp4``, ``subtitle/<videoID>.srt``.
* MVBench (``OpenGVLab/MVBench``, branch ``video``): ``test.json`` = ``{"root": {task: prefix},
  "meta": {task: [{video, question, candidates, answer}]}}``, videos under ``<prefix>/``.
* MLVU (``MLVU/MVLU``): ``MLVU/json/<n>_<task>.json`` for the 7 multiple-choice tasks (a list of
  ``{video, duration, question, candidates, answer, question_type}``; a task may be empty),
  videos under ``MLVU/video/<n>_<task>/``.
* LongVideoBench (``longvideobench/LongVideoBench``): ``lvb_val.json`` (records with
  ``correct_choice`` an option index, ``duration_group`` 15, ...), ``videos/``, ``subtitles/``.

The snapshot name is a hash of the generation parameters and clip names carry part of it, so a
regenerated benchmark never reuses VLMEvalKit's cached frames (``$LMUData/images/<dataset>/<video>``
is keyed by clip name only). VLMEvalKit regenerates ``<dataset>.tsv`` inside the snapshot (the md5
cannot match the real benchmark's), so the folder must stay writable.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .benchmarks import PAPER_BENCHMARKS, Benchmark, resolve_benchmark
from .vlmeval_env import hub_cache_dir

MANIFEST_NAME = "tango_demo.json"
LOCK_NAME = ".locks/tango_demo.lock"  # beside huggingface_hub's own locks, which cache scans skip
# Part of the recorded parameters: bump it whenever the generated files change for the same
# parameters, so that existing demo data is regenerated instead of reused.
FORMAT_VERSION = 1
GENERATOR = "tango_eval.demo_data"

HEIGHT, WIDTH = 64, 96          # even (yuv420p)
FPS = 8
SECONDS = 3
SQUARE = 12                     # side of a square, pixels (even: whole chroma samples)

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (30, 185, 55),
    "blue": (35, 75, 230),
    "yellow": (235, 215, 30),
    "purple": (155, 50, 205),
}
DIRECTIONS: Tuple[str, ...] = ("left", "right", "up", "down")
# Words, not digits: pandas reads a digit answer back as an int and VLMEvalKit then compares
# it with the candidate strings (never equal). None of these is a pandas NA spelling either.
COUNTS: Tuple[str, ...] = ("one", "two", "three", "four", "five")
KINDS: Tuple[str, ...] = ("colour", "direction", "count")

QUESTIONS: Dict[str, str] = {
    "colour": "What colour is the square that moves across the video?",
    "direction": "In which direction does the square move?",
    "count": "How many squares move in the video?",
}

# Largest option count per benchmark (Video-MME has A-D, LongVideoBench up to E).
MAX_OPTIONS: Dict[str, int] = {"Video-MME": 4, "MVBench": 4, "MLVU": 4, "LongVideoBench": 5}

# Category fields, chosen from the values VLMEvalKit's rating code expects.
VIDEOMME_TASK: Dict[str, str] = {
    "colour": "Attribute Perception", "direction": "Spatial Perception", "count": "Counting Problem",
}
MVBENCH_TASK: Dict[str, str] = {
    "colour": "Moving Attribute", "direction": "Moving Direction", "count": "Moving Count",
}
MVBENCH_PREFIX = "video/clevrer/video_validation/"
MLVU_TASKS: Tuple[Tuple[str, str], ...] = (
    ("plotQA", "1_plotQA"), ("needle", "2_needle"), ("ego", "3_ego"), ("count", "4_count"),
    ("order", "5_order"), ("anomaly_reco", "6_anomaly_reco"), ("topic_reasoning", "7_topic_reasoning"),
)
LVB_CATEGORY: Dict[str, str] = {"colour": "S2A", "direction": "T2A", "count": "S2O"}


@dataclass(frozen=True)
class DemoSample:
    """One generated question.

    benchmark: plain name (``MVBench``). video: absolute path of the clip. question: the question
    text. answer: the correct option letter (``A``..``E``). options: the option texts in order
    (``answer`` indexes them). task: the benchmark's task/category field for this question.
    """

    benchmark: str
    video: str
    question: str
    answer: str
    options: Tuple[str, ...] = ()
    task: str = ""


@dataclass(frozen=True)
class _Question:
    """A generated question before it is laid out in a benchmark's format."""

    kind: str
    question: str
    options: Tuple[str, ...]
    answer_index: int
    colours: Tuple[str, ...]       # colour of each moving square
    directions: Tuple[str, ...]    # direction of each moving square

    @property
    def answer_letter(self) -> str:
        return chr(ord("A") + self.answer_index)

    @property
    def answer_text(self) -> str:
        return self.options[self.answer_index]


# ----------------------------------------------------------------------------------------------
# Clips


def _background(rng: np.random.Generator) -> np.ndarray:
    """A smooth, muted gradient (H, W, 3) float32: grey levels with a slight tint."""
    corner_a = rng.uniform(95, 145) + rng.uniform(-12, 12, size=3)
    corner_b = rng.uniform(95, 145) + rng.uniform(-12, 12, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    t = (np.cos(angle) * xs / WIDTH + np.sin(angle) * ys / HEIGHT)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return (corner_a[None, None, :] * (1 - t[..., None]) + corner_b[None, None, :] * t[..., None]).astype(np.float32)


def _path(direction: str, lane: float, frames: int) -> List[Tuple[int, int]]:
    """Top-left corners of a square moving in ``direction`` along ``lane`` (0..1 across the other axis)."""
    corners = []
    for i in range(frames):
        progress = 0.05 + 0.9 * i / max(frames - 1, 1)
        if direction in ("left", "right"):
            along = progress if direction == "right" else 1 - progress
            x = 2 * int(round(along * (WIDTH - SQUARE) / 2))
            y = 2 * int(round(lane * (HEIGHT - SQUARE) / 2))
        else:
            along = progress if direction == "down" else 1 - progress
            y = 2 * int(round(along * (HEIGHT - SQUARE) / 2))
            x = 2 * int(round(lane * (WIDTH - SQUARE) / 2))
        corners.append((y, x))
    return corners


def render_clip(question: _Question, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W, 3) uint8 frames showing ``question``'s squares moving over a smooth background."""
    frames = FPS * SECONDS
    background = _background(rng)
    count = len(question.colours)
    # Squares of one clip share an axis and move in separate lanes, so they never overlap.
    lanes = [(k + 0.5) / count for k in range(count)] if count > 1 else [float(rng.uniform(0.3, 0.7))]
    paths = [_path(d, lane, frames) for d, lane in zip(question.directions, lanes)]
    video = np.repeat(background[None], frames, axis=0)
    for colour, path in zip(question.colours, paths):
        for t, (y, x) in enumerate(path):
            video[t, y:y + SQUARE, x:x + SQUARE] = COLOURS[colour]
    return np.clip(np.round(video), 0, 255).astype(np.uint8)


def _write_clip(path: Path, question: _Question, rng: np.random.Generator) -> None:
    """Encode the clip of ``question`` at ``path``."""
    from tango_core.models.video import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(str(path), render_clip(question, rng), fps=FPS, gop_size=1)  # all key frames: sharp colours


def _corrupt_clip(path: Path) -> None:
    """Replace a clip by bytes no decoder accepts (an MP4-like start, then noise)."""
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + hashlib.sha256(path.name.encode()).digest() * 64)


# ----------------------------------------------------------------------------------------------
# Questions


def _answer_positions(options: Sequence[int], rng: np.random.Generator) -> List[int]:
    """Correct-option positions, one per question: taken in a random order, the questions get
    positions A, B, C, ... in turn, so the answer letters spread evenly over the options."""
    positions = [0] * len(options)
    for turn, question in enumerate(rng.permutation(len(options))):
        positions[int(question)] = turn % options[int(question)]
    return positions


def _make_questions(benchmark: str, count: int, rng: np.random.Generator) -> List[_Question]:
    """``count`` answerable questions for ``benchmark`` (kinds cycle colour / direction / count)."""
    first = int(rng.integers(0, len(KINDS)))
    kinds = [KINDS[(first + i) % len(KINDS)] for i in range(count)]
    pools = {"colour": tuple(COLOURS), "direction": DIRECTIONS, "count": COUNTS}
    n_options = [min(len(pools[kind]), MAX_OPTIONS[benchmark]) for kind in kinds]
    positions = _answer_positions(n_options, rng)
    questions = []
    for kind, n, position in zip(kinds, n_options, positions):
        pool = pools[kind]
        truth = pool[int(rng.integers(0, len(pool)))]
        distractors = [p for p in pool if p != truth]
        chosen = [distractors[int(i)] for i in rng.permutation(len(distractors))[: n - 1]]
        options = chosen[:position] + [truth] + chosen[position:]
        if kind == "colour":
            colours, directions = (truth,), (DIRECTIONS[int(rng.integers(0, 4))],)
        elif kind == "direction":
            colours, directions = (tuple(COLOURS)[int(rng.integers(0, len(COLOURS)))],), (truth,)
        else:
            number = COUNTS.index(truth) + 1
            palette = [tuple(COLOURS)[int(i)] for i in rng.permutation(len(COLOURS))[:number]]
            # Up to three squares fit in horizontal lanes; more move vertically (wider spacing).
            axis = ("left", "right") if number <= 3 and rng.integers(0, 2) else ("up", "down")
            colours = tuple(palette)
            directions = tuple(axis[int(rng.integers(0, 2))] for _ in range(number))
        questions.append(_Question(kind, QUESTIONS[kind], tuple(options), position, colours, directions))
    return questions


# ----------------------------------------------------------------------------------------------
# Formats: each writer lays questions out in a snapshot folder and returns, in the row order of the
# TSV that VLMEvalKit builds from them, (question number, video path in the snapshot, task field).

_Layout = List[Tuple[int, str, str]]


def _videomme(root: Path, tag: str, questions: Sequence[_Question], clip: Callable[[Path, _Question], None]) -> _Layout:
    import pandas as pd

    rows, layout = [], []
    for i, q in enumerate(questions):
        video_id = f"demo{tag}v{i:03d}"
        clip(root / "video" / f"{video_id}.mp4", q)
        srt = root / "subtitle" / f"{video_id}.srt"
        srt.parent.mkdir(parents=True, exist_ok=True)
        srt.write_text(f"1\n00:00:00,000 --> 00:00:0{SECONDS},000\nWatch the squares.\n")
        rows.append({
            "video_id": f"{i + 1:03d}",
            "duration": "short",
            "domain": "Life Record",
            "sub_category": "Daily Life",
            "url": "",
            "videoID": video_id,
            "question_id": f"{i + 1:03d}-1",
            "task_type": VIDEOMME_TASK[q.kind],
            "question": q.question,
            "options": [f"{chr(ord('A') + k)}. {text.capitalize()}." for k, text in enumerate(q.options)],
            "answer": q.answer_letter,
        })
        layout.append((i, f"video/{video_id}.mp4", VIDEOMME_TASK[q.kind]))
    parquet = root / "videomme" / "test-00000-of-00001.parquet"
    parquet.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(parquet, index=False)
    return layout


def _mvbench(root: Path, tag: str, questions: Sequence[_Question], clip: Callable[[Path, _Question], None]) -> _Layout:
    meta: Dict[str, List[Dict[str, object]]] = {}
    rows: Dict[str, _Layout] = {}
    for i, q in enumerate(questions):
        task = MVBENCH_TASK[q.kind]
        name = f"demo{tag}m{i:03d}.mp4"
        clip(root / MVBENCH_PREFIX / name, q)
        meta.setdefault(task, []).append(
            {"video": name, "question": q.question, "candidates": list(q.options), "answer": q.answer_text}
        )
        rows.setdefault(task, []).append((i, MVBENCH_PREFIX + name, task))
    test = {"root": {task: MVBENCH_PREFIX for task in meta}, "meta": meta}
    (root / "test.json").write_text(json.dumps(test, indent=1))
    return [row for task in meta for row in rows[task]]  # VLMEvalKit lists the rows task by task


def _mlvu(root: Path, tag: str, questions: Sequence[_Question], clip: Callable[[Path, _Question], None]) -> _Layout:
    per_task: Dict[str, List[Dict[str, object]]] = {task: [] for task, _ in MLVU_TASKS}
    rows: Dict[str, _Layout] = {task: [] for task, _ in MLVU_TASKS}
    for i, q in enumerate(questions):
        task, folder = MLVU_TASKS[i % len(MLVU_TASKS)]
        name = f"demo{tag}l{i:03d}.mp4"
        clip(root / "MLVU" / "video" / folder / name, q)
        per_task[task].append({
            "video": name, "duration": float(SECONDS), "question": q.question,
            "candidates": list(q.options), "answer": q.answer_text, "question_type": task,
        })
        rows[task].append((i, f"MLVU/video/{folder}/{name}", task))
    json_dir = root / "MLVU" / "json"
    json_dir.mkdir(parents=True, exist_ok=True)
    for task, folder in MLVU_TASKS:  # VLMEvalKit opens all seven files
        (json_dir / f"{folder}.json").write_text(json.dumps(per_task[task], indent=1))
    return [row for task, _ in MLVU_TASKS for row in rows[task]]  # task by task, in this order


def _longvideobench(root: Path, tag: str, questions: Sequence[_Question], clip: Callable[[Path, _Question], None]) -> _Layout:
    records, layout = [], []
    for i, q in enumerate(questions):
        video_id = f"demo{tag}b{i:03d}"
        clip(root / "videos" / f"{video_id}.mp4", q)
        subtitle = f"{video_id}_en.json"
        (root / "subtitles").mkdir(parents=True, exist_ok=True)
        (root / "subtitles" / subtitle).write_text(json.dumps(
            [{"start": "00:00:00.000", "end": f"00:00:0{SECONDS - 1}.500", "line": "Watch the squares."}]
        ))
        records.append({
            "video_id": video_id,
            "question": q.question,
            "question_wo_referring_query": q.question,
            "candidates": list(q.options),
            "correct_choice": q.answer_index,
            "position": [],
            "topic_category": "DEMO-Generated",
            "question_category": LVB_CATEGORY[q.kind],
            "level": "L1-Perception",
            "id": f"{video_id}_0",
            "video_path": f"{video_id}.mp4",
            "subtitle_path": subtitle,
            "duration_group": 15,
            "starting_timestamp_for_subtitles": 0,
            "duration": float(SECONDS),
            "view_count": 0,
        })
        layout.append((i, f"videos/{video_id}.mp4", LVB_CATEGORY[q.kind]))
    (root / "lvb_val.json").write_text(json.dumps(records, indent=1))
    return layout


_WRITERS = {"Video-MME": _videomme, "MVBench": _mvbench, "MLVU": _mlvu, "LongVideoBench": _longvideobench}


# ----------------------------------------------------------------------------------------------
# Cache layout, manifest, idempotence


class DemoDataError(RuntimeError):
    """The demo data cannot be written where it was asked for."""


def _parameters(benchmark: Benchmark, samples: int, seed: int, corrupt: bool) -> Dict[str, object]:
    return {
        "generator": GENERATOR, "format_version": FORMAT_VERSION, "benchmark": benchmark.name,
        "samples_per_benchmark": samples, "seed": seed, "corrupt": corrupt,
        "clip": {"height": HEIGHT, "width": WIDTH, "fps": FPS, "seconds": SECONDS},
    }


def _snapshot_name(parameters: Mapping[str, object]) -> str:
    """40-hex snapshot name derived from the parameters (stands in for a commit hash)."""
    return hashlib.sha1(json.dumps(parameters, sort_keys=True).encode()).hexdigest()


def _read_manifest(snapshot: Path) -> Optional[Dict[str, object]]:
    try:
        return json.loads((snapshot / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _samples_from_manifest(snapshot: Path, manifest: Mapping[str, object]) -> List[DemoSample]:
    return [
        DemoSample(
            benchmark=str(item["benchmark"]), video=str(snapshot / str(item["video"])),
            question=str(item["question"]), answer=str(item["answer"]),
            options=tuple(item["options"]), task=str(item["task"]),
        )
        for item in manifest["samples"]  # type: ignore[union-attr]
    ]


def _existing(folder: Path, benchmark: Benchmark, parameters: Mapping[str, object]) -> Optional[List[DemoSample]]:
    """The samples of an up-to-date demo snapshot for ``parameters``, else None."""
    ref = folder / "refs" / benchmark.branch
    if not ref.is_file():
        return None
    snapshot = folder / "snapshots" / ref.read_text()
    manifest = _read_manifest(snapshot)
    if manifest is None or manifest.get("parameters") != dict(parameters):
        return None
    samples = _samples_from_manifest(snapshot, manifest)
    if not all(Path(s.video).is_file() for s in samples):
        return None
    return samples


def _check_ours(folder: Path, benchmark: Benchmark) -> None:
    """Refuse to replace a cache folder that holds anything but demo snapshots (a real benchmark)."""
    snapshots = folder / "snapshots"
    if not folder.exists():
        return
    foreign = [p for p in (snapshots.iterdir() if snapshots.is_dir() else []) if _read_manifest(p) is None]
    other = [p for p in folder.iterdir() if p.name not in ("refs", "snapshots", "blobs") and not p.name.startswith(".tango_demo")]
    if foreign or other or (folder / "blobs").exists():
        raise DemoDataError(
            f"{folder} holds data that is not Tango demo data (the real {benchmark.name}?); refusing to "
            "overwrite it. Use another --data-root for the demo."
        )


def _write_benchmark(folder: Path, benchmark: Benchmark, parameters: Dict[str, object], samples: int, seed: int, corrupt: bool) -> List[DemoSample]:
    """Generate one benchmark into a fresh snapshot of ``folder`` and point its ref at it."""
    name = _snapshot_name(parameters)
    tag = name[:8]
    rng = np.random.default_rng([seed, zlib.crc32(benchmark.name.encode())])
    questions = _make_questions(benchmark.name, samples, rng)
    clip_rng = np.random.default_rng([seed, zlib.crc32(benchmark.name.encode()), 1])

    def clip(path: Path, question: _Question) -> None:
        _write_clip(path, question, clip_rng)

    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tango_demo_", dir=folder))
    try:
        layout = _WRITERS[benchmark.name](staging, tag, questions, clip)
        if corrupt:  # the first sample in VLMEvalKit's row order
            _corrupt_clip(staging / layout[0][1])
        items = [
            {"benchmark": benchmark.name, "video": video, "question": questions[i].question,
             "answer": questions[i].answer_letter, "options": list(questions[i].options), "task": task}
            for i, video, task in layout
        ]
        (staging / MANIFEST_NAME).write_text(json.dumps(
            {"note": "Generated demo data (tango_eval.demo_data), not the real benchmark.",
             "parameters": parameters, "dataset": benchmark.dataset, "samples": items}, indent=1))
        snapshots = folder / "snapshots"
        snapshots.mkdir(exist_ok=True)
        target = snapshots / name
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    refs = folder / "refs"
    refs.mkdir(exist_ok=True)
    tmp_ref = folder / f".tango_demo_ref_{benchmark.branch}"  # not in refs/: huggingface_hub reads every file there
    tmp_ref.write_text(name)  # no newline: VLMEvalKit and huggingface_hub read it raw
    os.replace(tmp_ref, refs / benchmark.branch)
    for old in snapshots.iterdir():
        if old.name != name:
            shutil.rmtree(old)
    return _samples_from_manifest(target, json.loads((target / MANIFEST_NAME).read_text()))


def write_demo_benchmarks(
    data_root: str | os.PathLike,
    benchmarks: Iterable[str] = PAPER_BENCHMARKS,
    samples_per_benchmark: int = 8,
    seed: int = 0,
    corrupt: Iterable[str] = (),
) -> Dict[str, List[DemoSample]]:
    """Write generated demo versions of ``benchmarks`` into ``data_root``'s hub cache.

    Returns the samples per plain benchmark name, in VLMEvalKit's row order. Idempotent: a
    benchmark whose snapshot already holds these parameters is left untouched; other parameters
    replace it. ``corrupt``: benchmarks whose first clip is written as undecodable bytes. Raises
    :class:`DemoDataError` rather than overwrite a cache folder that holds non-demo data.
    """
    if int(samples_per_benchmark) < 1:
        raise ValueError(f"samples_per_benchmark must be at least 1, got {samples_per_benchmark}.")
    chosen = [resolve_benchmark(name) for name in benchmarks]
    broken = {resolve_benchmark(name).name for name in corrupt}
    stray = broken - {b.name for b in chosen}
    if stray:
        raise ValueError(f"corrupt names benchmarks that are not written: {', '.join(sorted(stray))}.")
    hub = hub_cache_dir(str(data_root))
    hub.mkdir(parents=True, exist_ok=True)
    result: Dict[str, List[DemoSample]] = {}
    (hub / LOCK_NAME).parent.mkdir(exist_ok=True)
    with open(hub / LOCK_NAME, "a") as lock:  # one writer at a time (e.g. several ranks)
        fcntl.flock(lock, fcntl.LOCK_EX)
        for benchmark in chosen:
            broken_here = benchmark.name in broken
            parameters = _parameters(benchmark, int(samples_per_benchmark), int(seed), broken_here)
            folder = benchmark.cache_folder(hub)
            samples = _existing(folder, benchmark, parameters)
            if samples is None:
                _check_ours(folder, benchmark)
                samples = _write_benchmark(folder, benchmark, parameters, int(samples_per_benchmark), int(seed), broken_here)
            result[benchmark.name] = samples
    return result


def demo_manifest(data_root: str | os.PathLike, benchmark: str) -> Optional[Dict[str, object]]:
    """The manifest of ``benchmark``'s demo snapshot in ``data_root`` (None when there is none)."""
    spec = resolve_benchmark(benchmark)
    folder = spec.cache_folder(hub_cache_dir(str(data_root)))
    ref = folder / "refs" / spec.branch
    if not ref.is_file():
        return None
    return _read_manifest(folder / "snapshots" / ref.read_text().strip())


__all__ = ["DemoSample", "DemoDataError", "write_demo_benchmarks", "demo_manifest"]

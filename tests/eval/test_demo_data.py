"""Generated demo benchmarks, read and scored by VLMEvalKit's own dataset classes (offline)."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
from scipy import ndimage

from tango_core.models.video import probe_video, read_frames
from tango_eval.benchmarks import BENCHMARKS, PAPER_BENCHMARKS
from tango_eval.demo_data import (COLOURS, MANIFEST_NAME, QUESTIONS, DemoDataError, DemoSample,
                                  demo_manifest, write_demo_benchmarks)
from tango_eval.records import EMPTY_ANSWER, FAILED_ANSWER

from demo_settings import SAMPLES
from tango_eval.vlmeval_env import captured_output, hub_cache_dir

# VLMEvalKit's Video-MME / LongVideoBench ratings average empty categories.
pytestmark = pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")
PLACEHOLDERS = (FAILED_ANSWER, EMPTY_ANSWER)


def natural_answer(sample: DemoSample, letter: str) -> str:
    """A prediction naming ``letter`` the way a model answers each benchmark's prompt."""
    text = sample.options[string.ascii_uppercase.index(letter)]
    return {
        "Video-MME": letter,                 # "Respond with only the letter"
        "MVBench": f"{letter}) {text}",      # continues the prompt's "Best option:("
        "MLVU": f"({letter}) {text}",
        "LongVideoBench": letter,            # "Answer with the option's letter"
    }[sample.benchmark]


def evaluate(dataset, predictions: Sequence[str], folder: Path, rows=None) -> float:
    """Accuracy (fraction) that VLMEvalKit's evaluate() gives ``predictions`` for the dataset's rows
    (or ``rows``), in a prediction file of VLMEvalKit's format scored in a fresh ``folder``."""
    from vlmeval.smp import dump

    folder.mkdir(parents=True)
    table = (dataset.data if rows is None else rows).copy()
    table["prediction"] = list(predictions)
    path = folder / f"demo_{dataset.dataset_name}.xlsx"
    dump(table, str(path))
    with captured_output("evaluate"):
        rating = type(dataset).evaluate(str(path), model="exact_matching")
    if dataset.dataset_name == "MVBench_MP4":
        correct, total = rating["overall"][:2]
        return correct / total
    if dataset.dataset_name == "MLVU_MCQ":
        return sum(v[0] for v in rating.values()) / sum(v[1] for v in rating.values())
    return float(rating["overall"]["overall"])


# ----------------------------------------------------------------------------------------------
# Layout and content


def test_hub_cache_layout(demo, data_root):
    hub = hub_cache_dir(str(data_root))
    assert hub == Path(data_root).resolve() / "hub"
    for name in PAPER_BENCHMARKS:
        benchmark = BENCHMARKS[name]
        ref = benchmark.cache_folder(hub) / "refs" / benchmark.branch
        snapshot_name = ref.read_text()
        assert len(snapshot_name) == 40 and all(c in "0123456789abcdef" for c in snapshot_name)
        snapshot = benchmark.cache_folder(hub) / "snapshots" / snapshot_name
        assert (snapshot / MANIFEST_NAME).is_file()
        assert [p.name for p in (benchmark.cache_folder(hub) / "snapshots").iterdir()] == [snapshot_name]
        assert demo_manifest(data_root, name)["parameters"]["samples_per_benchmark"] == SAMPLES
        assert len(demo[name]) == SAMPLES
        for sample in demo[name]:
            assert sample.benchmark == name and Path(sample.video).is_absolute()
            assert Path(sample.video).is_relative_to(snapshot)
            assert 1_000 < os.path.getsize(sample.video) < 60_000
            assert sample.answer in "ABCDE"[: len(sample.options)]
        assert len({s.answer for s in demo[name]}) >= 3, "answer letters should spread over the options"
    assert {len(s.options) for s in demo["Video-MME"]} == {4}
    assert max(len(s.options) for s in demo["LongVideoBench"]) == 5


def _measure(frames: np.ndarray) -> Dict[str, object]:
    """What a decoded clip shows: the colours of the moving squares, how many, which way they go."""
    pixels = frames.astype(np.int32)
    saturated = (pixels.max(-1) - pixels.min(-1)) > 80  # the squares; the background is near grey

    def blobs(t: int) -> List[np.ndarray]:  # masks of square-sized blobs (codec ringing is smaller)
        labels, count = ndimage.label(saturated[t])
        return [labels == k for k in range(1, count + 1) if (labels == k).sum() >= 40]

    counts = [len(blobs(t)) for t in range(len(frames))]
    middle = len(frames) // 2
    colours = []
    for mask in blobs(middle):
        mean = pixels[middle][mask].mean(0)
        colours.append(min(COLOURS, key=lambda c: float(np.sum((np.array(COLOURS[c]) - mean) ** 2))))
    dy, dx = np.argwhere(saturated[-2]).mean(0) - np.argwhere(saturated[1]).mean(0)
    direction = ("down" if dy > 0 else "up") if abs(dy) > abs(dx) else ("right" if dx > 0 else "left")
    return {"count": int(np.median(counts)), "colours": colours, "direction": direction}


def test_clips_show_the_answer(demo):
    words = ("one", "two", "three", "four", "five")
    for samples in demo.values():
        for sample in samples:
            count, fps = probe_video(sample.video)
            assert count == 24 and fps == pytest.approx(8.0)
            seen = _measure(read_frames(sample.video, range(count)))
            truth = sample.options[string.ascii_uppercase.index(sample.answer)]
            if sample.question == QUESTIONS["colour"]:
                assert seen["count"] == 1 and seen["colours"] == [truth], sample
            elif sample.question == QUESTIONS["direction"]:
                assert seen["count"] == 1 and seen["direction"] == truth, sample
            else:
                assert sample.question == QUESTIONS["count"]
                assert seen["count"] == words.index(truth) + 1, sample


# ----------------------------------------------------------------------------------------------
# VLMEvalKit reads it


@pytest.mark.parametrize("name", PAPER_BENCHMARKS)
def test_vlmeval_loads_and_prompts(name, demo, datasets):
    dataset = datasets[name]
    assert len(dataset) == SAMPLES
    for i, sample in enumerate(demo[name]):
        message = dataset.build_prompt(i, video_llm=True)
        videos = [m["value"] for m in message if m["type"] == "video"]
        assert len(videos) == 1 and os.path.normpath(videos[0]) == sample.video
        assert probe_video(videos[0])[0] == 24
        text = "\n".join(m["value"] for m in message if m["type"] == "text")
        assert sample.question in text
        assert all(option.lower() in text.lower() for option in sample.options)


@pytest.mark.parametrize("name", PAPER_BENCHMARKS)
def test_vlmeval_scores_it(name, demo, datasets, tmp_path):
    dataset, samples = datasets[name], demo[name]
    right = [natural_answer(s, s.answer) for s in samples]
    letters = [s.answer for s in samples]
    wrong = [string.ascii_uppercase[(string.ascii_uppercase.index(s.answer) + 1) % len(s.options)] for s in samples]
    assert evaluate(dataset, right, tmp_path / "right") == 1.0
    assert evaluate(dataset, letters, tmp_path / "letters") == 1.0
    assert evaluate(dataset, wrong, tmp_path / "wrong") == 0.0
    assert evaluate(dataset, [natural_answer(s, w) for s, w in zip(samples, wrong)], tmp_path / "wrong_text") == 0.0
    for k, placeholder in enumerate(PLACEHOLDERS):
        assert evaluate(dataset, [placeholder] * SAMPLES, tmp_path / f"placeholder{k}") == 0.0


@pytest.mark.parametrize("name", ["MVBench", "MLVU"])
def test_placeholder_matched_as_option_text(name, datasets, tmp_path):
    """VLMEvalKit's exact matching falls back to "is an option's text inside the answer": an
    option such as "ailed" makes "[failed]" count as that option. A standalone "Z" (VLMEvalKit's
    own "no option" answer) is tried first, so "[failed: Z]" never matches."""
    dataset = datasets[name]
    table = dataset.data.copy()
    candidates = eval(table.loc[0, "candidates"])
    candidates[candidates.index(table.loc[0, "answer"])] = "ailed"
    table.loc[0, "candidates"], table.loc[0, "answer"] = str(candidates), "ailed"
    assert evaluate(dataset, ["[failed]"] * SAMPLES, tmp_path / "plain", table) == 1 / SAMPLES
    for k, placeholder in enumerate(PLACEHOLDERS):
        assert evaluate(dataset, [placeholder] * SAMPLES, tmp_path / f"with_z{k}", table) == 0.0


# ----------------------------------------------------------------------------------------------
# Idempotence, parameters, corruption, safety


def _files(folder: Path) -> Dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.suffix != ".tsv"}


def test_same_parameters_rewrite_nothing(demo, data_root, datasets):
    hub = hub_cache_dir(str(data_root))
    before = _files(hub)
    again = write_demo_benchmarks(data_root, samples_per_benchmark=SAMPLES, seed=0)
    assert again == demo
    assert _files(hub) == before


def test_other_parameters_rewrite(tmp_path):
    first = write_demo_benchmarks(tmp_path, benchmarks=["MVBench_MP4"], samples_per_benchmark=3, seed=0)["MVBench"]
    folder = BENCHMARKS["MVBench"].cache_folder(hub_cache_dir(str(tmp_path)))
    same_seed_elsewhere = write_demo_benchmarks(tmp_path / "other", benchmarks=["MVBench"], samples_per_benchmark=3, seed=0)
    assert [(s.question, s.answer, s.options) for s in first] == [
        (s.question, s.answer, s.options) for s in same_seed_elsewhere["MVBench"]
    ]
    second = write_demo_benchmarks(tmp_path, benchmarks=["MVBench"], samples_per_benchmark=3, seed=1)["MVBench"]
    assert {Path(s.video).name for s in first}.isdisjoint(Path(s.video).name for s in second)
    assert not any(Path(s.video).exists() for s in first)
    assert [p.name for p in (folder / "snapshots").iterdir()] == [(folder / "refs" / "video").read_text()]
    assert all(Path(s.video).is_file() for s in second)


def test_corrupt_first_clip(tmp_path):
    samples = write_demo_benchmarks(tmp_path, benchmarks=["LongVideoBench"], samples_per_benchmark=3,
                                    corrupt=["LongVideoBench"])["LongVideoBench"]
    with pytest.raises(ValueError):
        probe_video(samples[0].video)
    assert all(probe_video(s.video)[0] == 24 for s in samples[1:])
    clean = write_demo_benchmarks(tmp_path, benchmarks=["LongVideoBench"], samples_per_benchmark=3)["LongVideoBench"]
    assert probe_video(clean[0].video)[0] == 24
    with pytest.raises(ValueError, match="corrupt"):
        write_demo_benchmarks(tmp_path, benchmarks=["MVBench"], corrupt=["MLVU"])


def test_refuses_to_overwrite_real_data(tmp_path):
    folder = BENCHMARKS["Video-MME"].cache_folder(tmp_path / "hub")
    snapshot = folder / "snapshots" / ("0" * 40)
    (snapshot / "videomme").mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    with pytest.raises(DemoDataError, match="not Tango demo data"):
        write_demo_benchmarks(tmp_path, benchmarks=["Video-MME"], samples_per_benchmark=2)
    assert (snapshot / "videomme").is_dir()


def test_vlmeval_import_left_ssl_checks_on(vlmeval_module):
    import ssl

    assert ssl._create_default_https_context is ssl.create_default_context

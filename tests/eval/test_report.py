"""Scores read from VLMEvalKit's files and the paper-style report, on a hand-made sweep folder.

The folder is built here: for vanilla and two retention ratios, VLMEvalKit-format prediction
files over the demo benchmarks with a chosen set of right answers, scored by VLMEvalKit's real
``evaluate(model='exact_matching')`` in place, plus hand-written ``_tango.json`` summaries.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd
import pytest

from tango_eval.benchmarks import BENCHMARKS, PAPER_BENCHMARKS
from tango_eval.demo_data import DemoSample
from tango_eval.records import FAILED_ANSWER
from tango_eval.report import collect_results, main, write_report
from tango_eval.scores import ScoreFileError, benchmark_accuracy
from tango_eval.vlmeval_env import captured_output

from demo_settings import SAMPLES

pytestmark = pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")

# (No test argument is called "benchmark": pytest-benchmark, installed here, owns that name.)
MODEL = "llava_onevision"
TOKENS = 1568.0
# (method, ratio) -> right answers out of 8 per benchmark; directories are made in this order.
RUNS: Dict[Tuple[str, float], Dict[str, int]] = {
    ("tango", 0.2): {"Video-MME": 5, "MVBench": 5, "MLVU": 6, "LongVideoBench": 3},
    ("vanilla", 1.0): {"Video-MME": 6, "MVBench": 6, "MLVU": 7, "LongVideoBench": 4},
    ("tango", 0.1): {"Video-MME": 4, "MVBench": 3, "MLVU": 5, "LongVideoBench": 2},
}
FAILED = {("tango", 0.1): 1}  # that many of the wrong answers are the runner's FAILED_ANSWER placeholder


def natural_answer(sample: DemoSample, letter: str) -> str:
    text = sample.options[string.ascii_uppercase.index(letter)]
    return {"Video-MME": letter, "MVBench": f"{letter}) {text}", "MLVU": f"({letter}) {text}",
            "LongVideoBench": letter}[sample.benchmark]


def wrong_letter(sample: DemoSample) -> str:
    return string.ascii_uppercase[(string.ascii_uppercase.index(sample.answer) + 1) % len(sample.options)]


def right_mask(run: Tuple[str, float], benchmark: str) -> np.ndarray:
    """Which of the 8 questions the run answers right (a fixed, run-specific choice)."""
    rng = np.random.default_rng([int(run[1] * 100), PAPER_BENCHMARKS.index(benchmark)])
    mask = np.zeros(SAMPLES, dtype=bool)
    mask[rng.permutation(SAMPLES)[: RUNS[run][benchmark]]] = True
    return mask


def expected_accuracy(run: Tuple[str, float], benchmark: str, samples: Sequence[DemoSample]) -> float:
    """The accuracy the chosen answers should get, computed here (MLVU: mean over its tasks)."""
    mask = right_mask(run, benchmark)
    if benchmark != "MLVU":
        return 100.0 * mask.mean()
    tasks = sorted({s.task for s in samples})
    return 100.0 * float(np.mean([mask[[s.task == t for s in samples]].mean() for t in tasks]))


def write_predictions(folder: Path, dataset, predictions: Sequence[str]) -> str:
    """A VLMEvalKit prediction file (the dataset's rows + ``prediction``), scored in place."""
    from vlmeval.smp import dump

    folder.mkdir(parents=True, exist_ok=True)
    name = f"{MODEL}_{dataset.dataset_name}.xlsx"
    table = dataset.data.copy()
    table["prediction"] = list(predictions)
    dump(table, str(folder / name))
    with captured_output("evaluate"):
        type(dataset).evaluate(str(folder / name), model="exact_matching")
    return name


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, demo, datasets) -> Path:
    work = tmp_path_factory.mktemp("sweep") / MODEL
    for run, counts in RUNS.items():
        method, ratio = run
        model_dir = work / method / f"ratio_{ratio}" / MODEL
        for benchmark in PAPER_BENCHMARKS:
            samples, dataset = demo[benchmark], datasets[benchmark]
            mask = right_mask(run, benchmark)
            predictions = [natural_answer(s, s.answer if ok else wrong_letter(s)) for s, ok in zip(samples, mask)]
            failed = FAILED.get(run, 0)
            for k in np.flatnonzero(~mask)[:failed]:
                predictions[k] = FAILED_ANSWER
            before = set(os.listdir(model_dir)) if model_dir.exists() else set()
            prediction_file = write_predictions(model_dir, dataset, predictions)
            summary = {
                "model": MODEL, "method": method, "retention_ratio": ratio,
                "pre_retain_ratio": None, "benchmark": benchmark, "dataset": dataset.dataset_name,
                "samples": SAMPLES, "answered": SAMPLES - failed, "reused": 0, "failed": failed,
                "avg_visual_tokens": TOKENS * ratio, "avg_visual_tokens_before": TOKENS, "demo": True,
                "prediction_file": prediction_file,
                "score_files": sorted(set(os.listdir(model_dir)) - before - {prediction_file}),
            }
            stem = prediction_file.rsplit(".", 1)[0]
            (model_dir / f"{stem}_tango.json").write_text(json.dumps(summary))
            (model_dir / "records" / dataset.dataset_name).mkdir(parents=True, exist_ok=True)
    return work


@pytest.fixture(scope="module")
def report(sweep) -> Dict[str, Path]:
    return write_report(sweep)


# ----------------------------------------------------------------------------------------------
# scores.py


def test_accuracies_come_from_vlmeval_files(sweep, demo):
    for run in RUNS:
        model_dir = sweep / run[0] / f"ratio_{run[1]}" / MODEL
        for benchmark in PAPER_BENCHMARKS:
            dataset = BENCHMARKS[benchmark].dataset
            accuracy = benchmark_accuracy(benchmark, model_dir, f"{MODEL}_{dataset}.xlsx")
            assert accuracy == pytest.approx(expected_accuracy(run, benchmark, demo[benchmark]), abs=1e-9)
    assert (sweep / "vanilla" / "ratio_1.0" / MODEL / f"{MODEL}_MLVU_MCQ_score.xlsx").is_file()
    assert not (sweep / "vanilla" / "ratio_1.0" / MODEL / f"{MODEL}_MLVU_MCQ_rating.json").exists()


def test_missing_malformed_and_stale_score_files(tmp_path, demo, datasets):
    predictions = [natural_answer(s, s.answer) for s in demo["MVBench"]]
    name = write_predictions(tmp_path, datasets["MVBench"], predictions)
    assert benchmark_accuracy("MVBench", tmp_path, name) == 100.0
    with pytest.raises(ScoreFileError, match=r"_Video-MME_score\.xlsx is missing"):
        benchmark_accuracy("Video-MME", tmp_path, f"{MODEL}_Video-MME.xlsx")
    rating = tmp_path / f"{MODEL}_MVBench_MP4_rating.json"
    good = rating.read_text()
    rating.write_text('{"overall": "lots"}')
    with pytest.raises(ScoreFileError, match=str(rating.name)):
        benchmark_accuracy("MVBench", tmp_path, name)
    rating.write_text(good)
    from vlmeval.smp import dump  # new predictions, old score file: VLMEvalKit would reuse it

    table = datasets["MVBench"].data.copy()
    table["prediction"] = [FAILED_ANSWER] * SAMPLES
    dump(table, str(tmp_path / name))
    with pytest.raises(ScoreFileError, match="does not score the current"):
        benchmark_accuracy("MVBench", tmp_path, name)


@pytest.mark.parametrize("name", ["MVBench", "MLVU"])
def test_api_failure_scores_count_as_wrong(name, tmp_path, demo, datasets):
    """VLMEvalKit scores its own failure message -1; MVBench's rating then counts it correct and
    MLVU's subtracts it. Here it is wrong."""
    prediction_file = write_predictions(tmp_path, datasets[name], ["Failed to obtain answer via API."] * SAMPLES)
    if name == "MVBench":
        rating = json.loads((tmp_path / f"{MODEL}_MVBench_MP4_rating.json").read_text())
        assert rating["overall"][:2] == [SAMPLES, SAMPLES]  # VLMEvalKit: all "correct"
    assert benchmark_accuracy(name, tmp_path, prediction_file) == 0.0


# ----------------------------------------------------------------------------------------------
# report.py


def test_csv_values(report, sweep, demo):
    frame = pd.read_csv(report["csv"])
    assert len(frame) == len(RUNS) * len(PAPER_BENCHMARKS)
    for col in ("model", "method", "retention_ratio", "benchmark", "accuracy", "samples", "failed",
                "avg_visual_tokens", "pre_retain_ratio", "answered", "reused", "dataset", "demo"):
        assert col in frame.columns
    for run in RUNS:
        for benchmark in PAPER_BENCHMARKS:
            row = frame[(frame.method == run[0]) & (frame.retention_ratio == run[1]) & (frame.benchmark == benchmark)]
            assert len(row) == 1
            row = row.iloc[0]
            assert row.accuracy == pytest.approx(expected_accuracy(run, benchmark, demo[benchmark]), abs=1e-9)
            assert row.model == MODEL and row.dataset == BENCHMARKS[benchmark].dataset and bool(row.demo)
            assert row.samples == SAMPLES and row.failed == FAILED.get(run, 0)
            assert row.avg_visual_tokens == pytest.approx(TOKENS * run[1])
            assert np.isnan(row.pre_retain_ratio)
    assert list(frame.method) == ["vanilla"] * 4 + ["tango"] * 8
    assert list(frame.retention_ratio) == [1.0] * 4 + [0.1] * 4 + [0.2] * 4
    assert list(frame.benchmark) == list(PAPER_BENCHMARKS) * 3
    pd.testing.assert_frame_equal(collect_results(sweep).drop(columns=["error"]),
                                  frame.drop(columns=["error"]), check_dtype=False)


def _table(lines: List[str], heading: str) -> List[List[str]]:
    start = next(i for i, line in enumerate(lines) if line.startswith("## ") and heading in line)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_markdown_layout(report, demo):
    lines = report["markdown"].read_text().splitlines()
    first_paragraph = next(line for line in lines[1:] if line.strip())
    assert "random weights" in first_paragraph and "say nothing about Tango" in first_paragraph
    assert "Video-MME 25.0% (4 options)" in first_paragraph
    lvb_chance = 100 * np.mean([1 / len(s.options) for s in demo["LongVideoBench"]])
    assert f"LongVideoBench {lvb_chance:.1f}% (4-5 options)" in first_paragraph

    header, _, *rows = _table(lines, "accuracy")
    assert header == ["Method", "Retention ratio", *PAPER_BENCHMARKS, "Avg"]
    assert [row[:2] for row in rows] == [["Vanilla", "1.0"], ["Tango", "0.1"], ["Tango", "0.2"]]
    vanilla = {b: expected_accuracy(("vanilla", 1.0), b, demo[b]) for b in PAPER_BENCHMARKS}
    vanilla["Avg"] = float(np.mean(list(vanilla.values())))
    assert rows[0][2:] == [f"{vanilla[b]:.1f}" for b in [*PAPER_BENCHMARKS, "Avg"]]
    for row, run in zip(rows[1:], [("tango", 0.1), ("tango", 0.2)]):
        values = {b: expected_accuracy(run, b, demo[b]) for b in PAPER_BENCHMARKS}
        values["Avg"] = float(np.mean(list(values.values())))
        assert row[2:] == [f"{values[b]:.1f} ({100 * values[b] / vanilla[b]:.1f}%)" for b in [*PAPER_BENCHMARKS, "Avg"]]

    header, _, *rows = _table(lines, "visual tokens")
    assert header == ["Method", "Retention ratio", *[f"{b} tokens" for b in PAPER_BENCHMARKS], "Failed / samples"]
    assert rows[0][2:] == ["1,568 / 1,568"] * 4 + ["0 / 32"]
    assert rows[1][2:] == [f"{TOKENS * 0.1:,.0f} / 1,568"] * 4 + ["4 / 32"]
    assert rows[2][-1] == "0 / 32"
    assert "Missing scores" not in report["markdown"].read_text()


def test_plot_is_a_png(report):
    from PIL import Image

    data = report["plot"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(report["plot"]) as image:
        image.verify()
    with Image.open(report["plot"]) as image:
        assert image.size[0] > 400 and image.size[1] > 300


def test_missing_scores_are_reported(tmp_path, sweep):
    import shutil

    work = tmp_path / "partial"
    shutil.copytree(sweep / "vanilla", work / "vanilla")
    (work / "vanilla" / "ratio_1.0" / MODEL / f"{MODEL}_Video-MME_score.xlsx").unlink()
    frame = collect_results(work)
    row = frame[frame.benchmark == "Video-MME"].iloc[0]
    assert np.isnan(row.accuracy) and "_Video-MME_score.xlsx is missing" in row.error
    text = write_report(work)["markdown"].read_text()
    assert "## Missing scores" in text and "Video-MME" in text.split("## Missing scores")[1]


def test_cli(report, sweep, tmp_path, capsys):
    assert main([str(sweep)]) == 0
    assert "| Vanilla | 1.0 |" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "VLMEvalKit"), str(root)]))
    done = subprocess.run([sys.executable, "-m", "tango_eval.report", str(empty)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
    assert "No results in" in done.stderr


def test_run_label_names_the_pre_llm_ratio_only_where_it_differs() -> None:
    from tango_eval.report import _run_label

    assert _run_label("vanilla", 1.0, float("nan")) == "Vanilla"
    assert _run_label("tango", 0.1, 0.1) == "Tango"
    assert _run_label("tango", 0.1, 0.121739) == "Tango (pre-LLM 0.121739)"

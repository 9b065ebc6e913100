"""VLMEvalKit/run.py end to end on a tiny model and generated benchmarks (CPU, offline).

One process against two (torchrun, gloo), a kill part way and a resume, failed videos, reruns:
predictions must match an uninterrupted one-process run sample for sample, with nothing lost
and nothing answered twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from tango_eval.records import FAILED_ANSWER

REPO = Path(__file__).resolve().parents[2]
RUN_PY = REPO / "VLMEvalKit" / "run.py"
SAMPLES = 6
DATASETS = ("Video-MME", "MVBench_MP4")


def environment() -> Dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "VLMEvalKit"), str(REPO)]))
    return env


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Dict[str, Path]:
    """A tiny LLaVA-OneVision checkpoint and generated benchmarks, one with an undecodable video."""
    from tango_core.testing.tiny_llava import save_tiny_llava
    from tango_eval.demo_data import write_demo_benchmarks

    root = tmp_path_factory.mktemp("runner")
    save_tiny_llava(str(root / "ov"), family="llava_onevision", seed=0)
    write_demo_benchmarks(str(root / "data"), benchmarks=["Video-MME", "MVBench"], samples_per_benchmark=SAMPLES, seed=1)
    write_demo_benchmarks(str(root / "broken"), benchmarks=["Video-MME"], samples_per_benchmark=SAMPLES, seed=1,
                          corrupt=("Video-MME",))
    return {"model": root / "ov", "data": root / "data", "broken": root / "broken", "root": root}


def command(assets, work_dir: Path, *extra: str, data_root: str = "data", datasets=("Video-MME", "MVBench")) -> List[str]:
    return [str(RUN_PY), "--model", "llava_onevision", "--model-path", str(assets["model"]), "--data-root",
            str(assets[data_root]), "--data", *datasets, "--nframe", "8", "--work-dir", str(work_dir), "--demo",
            "--offline", *extra]


def run(args: List[str], processes: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return subprocess.run(launcher + args, env=environment(), capture_output=True, text=True, timeout=timeout)


def predictions(work_dir: Path, dataset: str) -> Dict[str, str]:
    import pandas as pd

    table = pd.read_excel(work_dir / "llava_onevision" / f"llava_onevision_{dataset}.xlsx")
    return {str(i): str(p) for i, p in zip(table["index"], table["prediction"])}


def records(work_dir: Path, dataset: str) -> List[dict]:
    folder = work_dir / "llava_onevision" / "records" / dataset
    return [json.loads(line) for path in sorted(folder.glob("rank*.jsonl")) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def reference(assets) -> Path:
    """An uninterrupted one-process run."""
    work_dir = assets["root"] / "reference"
    result = run(command(assets, work_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Video-MME: answered 6, reused 0, failed 0" in result.stdout
    assert "MVBench_MP4: answered 6, reused 0, failed 0" in result.stdout
    return work_dir


def test_one_process_writes_vlmeval_predictions_scores_and_summary(reference) -> None:
    import pandas as pd

    for dataset, benchmark in (("Video-MME", "Video-MME"), ("MVBench_MP4", "MVBench")):
        answers = predictions(reference, dataset)
        assert len(answers) == SAMPLES and all(a.strip() and a != "nan" for a in answers.values())
        summary = json.loads((reference / "llava_onevision" / f"llava_onevision_{dataset}_tango.json").read_text())
        assert (summary["benchmark"], summary["samples"], summary["failed"], summary["method"]) == (benchmark, SAMPLES, 0, "tango")
        assert summary["retention_ratio"] == 0.1 and summary["demo"] is True
        assert summary["avg_visual_tokens_before"] == 8 * 196
        assert 0 < summary["avg_visual_tokens"] <= 0.2 * 8 * 196  # r = 0.1 plus the newline
        assert summary["score_files"], "VLMEvalKit's evaluate wrote no score file"
        for name in summary["score_files"]:
            assert (reference / "llava_onevision" / name).exists()
        score = pd.read_excel(reference / "llava_onevision" / next(n for n in summary["score_files"] if n.endswith("_score.xlsx")))
        assert len(score) == SAMPLES and 0.0 <= summary["accuracy"] <= 100.0
        recs = records(reference, dataset)
        assert sorted(r["index"] for r in recs) == sorted(answers) and all(r["visual_tokens_after"] for r in recs)


def test_rerun_reuses_everything(assets, reference) -> None:
    before = {d: predictions(reference, d) for d in DATASETS}
    result = run(command(assets, reference))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Video-MME: answered 0, reused 6, failed 0" in result.stdout
    assert "MVBench_MP4: answered 0, reused 6, failed 0" in result.stdout
    assert {d: predictions(reference, d) for d in DATASETS} == before
    assert all(len(records(reference, d)) == SAMPLES for d in DATASETS)


def test_two_processes_give_the_same_predictions(assets, reference) -> None:
    work_dir = assets["root"] / "two"
    result = run(command(assets, work_dir), processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Video-MME: answered 6, reused 0, failed 0") == 1  # printed once, by rank 0
    for dataset in DATASETS:
        assert predictions(work_dir, dataset) == predictions(reference, dataset)
        recs = records(work_dir, dataset)
        assert sorted(r["index"] for r in recs) == sorted(predictions(reference, dataset))  # none lost, none twice
        assert {r["rank"] for r in recs} == {0, 1}
        assert sorted(p.name for p in (work_dir / "llava_onevision" / "records" / dataset).glob("rank*.jsonl")) == ["rank0.jsonl", "rank1.jsonl"]


def test_killed_run_resumes_without_recomputing(assets, reference) -> None:
    work_dir = assets["root"] / "killed"
    first = work_dir / "llava_onevision" / "records" / "Video-MME" / "rank0.jsonl"
    process = subprocess.Popen([sys.executable] + command(assets, work_dir), env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if first.exists() and len(first.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = [r for r in records(work_dir, "Video-MME")]
    assert 2 <= len(finished) < SAMPLES
    result = run(command(assets, work_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    done = len(finished)
    assert f"Video-MME: answered {SAMPLES - done}, reused {done}, failed 0" in result.stdout
    for dataset in DATASETS:
        assert predictions(work_dir, dataset) == predictions(reference, dataset)
        indices = [r["index"] for r in records(work_dir, dataset)]
        assert sorted(indices) == sorted(set(indices)) and len(indices) == SAMPLES  # nothing answered twice
    assert [r["run_id"] for r in records(work_dir, "Video-MME")][:done] == [r["run_id"] for r in finished]


def test_undecodable_video_is_a_failed_sample_not_a_failed_run(assets) -> None:
    work_dir = assets["root"] / "broken_run"
    args = command(assets, work_dir, data_root="broken", datasets=("Video-MME",))
    result = run(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Video-MME: answered 5, reused 0, failed 1" in result.stdout
    answers = predictions(work_dir, "Video-MME")
    assert list(answers.values()).count(FAILED_ANSWER) == 1
    summary = json.loads((work_dir / "llava_onevision" / "llava_onevision_Video-MME_tango.json").read_text())
    assert summary["failed"] == 1
    (reason,) = summary["failed_samples"].values()
    assert "decode" in reason.lower() or "video" in reason.lower()
    again = run(args)  # failed samples are retried (VLMEvalKit's default), the rest reused
    assert "Video-MME: answered 0, reused 5, failed 1" in again.stdout
    kept = run(args + ["--keep-failed"])
    assert "Video-MME: answered 0, reused 6, failed 0" in kept.stdout
    assert predictions(work_dir, "Video-MME") == answers


def test_missing_xlsx_writer_is_one_clear_error_and_the_answers_are_kept(assets) -> None:
    """VLMEvalKit's dump silently writes a .pkl when xlsxwriter is missing; the run says so and what
    to install, and the next run (writer back) reuses every answer."""
    work_dir = assets["root"] / "no_xlsxwriter"
    shadow = assets["root"] / "shadow"
    (shadow / "xlsxwriter").mkdir(parents=True, exist_ok=True)
    (shadow / "xlsxwriter" / "__init__.py").write_text("raise ImportError('xlsxwriter hidden by the test')\n")
    args = command(assets, work_dir, datasets=("Video-MME",))
    env = environment()
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), env["PYTHONPATH"]])
    result = subprocess.run([sys.executable] + args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "pip install xlsxwriter" in result.stderr + result.stdout
    again = run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Video-MME: answered 0, reused {SAMPLES}, failed 0" in again.stdout


def test_other_settings_in_the_same_work_dir_are_refused(assets, reference) -> None:
    result = run(command(assets, reference, "--retain-ratio", "0.2"))
    assert result.returncode == 1
    assert "holds answers computed with other settings (model.retain_ratio differ)" in result.stderr
    assert "--fresh" in result.stderr


def test_infer_then_eval(assets) -> None:
    work_dir = assets["root"] / "modes"
    inferred = run(command(assets, work_dir, "--mode", "infer", datasets=("MVBench",)))
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    model_dir = work_dir / "llava_onevision"
    assert (model_dir / "llava_onevision_MVBench_MP4.xlsx").exists()
    assert not list(model_dir.glob("*_score.xlsx"))
    scored = run(command(assets, work_dir, "--mode", "eval", datasets=("MVBench",)))
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert "MVBench_MP4: answered 0, reused 6, failed 0" in scored.stdout
    assert list(model_dir.glob("*_score.xlsx"))

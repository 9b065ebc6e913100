"""The sweep scripts end to end in demo mode (tiny random-weight models, generated benchmarks, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tango_eval.benchmarks import PAPER_BENCHMARKS

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = {"llava_onevision": "run_eval_ov.sh", "llava_video": "run_eval_video.sh", "qwen2_5_vl": "run_eval_qwen.sh"}


def sweep(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(REPO / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_demo_sweep_writes_the_summary(tmp_path) -> None:
    """run_eval_ov.sh --demo from another directory: four benchmarks, vanilla and r = 0.1, summary files."""
    result = sweep("run_eval_ov.sh", "--demo", "--demo-samples", "3", "--ratios", "0.1", "--nframe", "8", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    work = tmp_path / "outputs" / "llava_onevision"  # the default work dir, relative to where it ran
    summary = pd.read_csv(work / "summary.csv")
    assert sorted(zip(summary["method"], summary["retention_ratio"])) == sorted([("vanilla", 1.0)] * 4 + [("tango", 0.1)] * 4)
    assert set(summary["benchmark"]) == set(PAPER_BENCHMARKS)
    assert (summary["samples"] == 3).all() and (summary["failed"] == 0).all() and summary["demo"].all()
    tango = summary[summary["method"] == "tango"]
    assert (tango["avg_visual_tokens"] < 0.2 * tango["avg_visual_tokens_before"]).all()
    for row in summary.itertuples():  # the accuracy is the one written in the run's own summary JSON
        recorded = json.loads(Path(row.result_file).read_text())["accuracy"]
        assert row.accuracy == pytest.approx(recorded)
    markdown = (work / "summary.md").read_text()
    assert "random weights" in markdown and "| Vanilla | 1.0 |" in markdown and "| Tango | 0.1 |" in markdown
    assert (work / "accuracy_vs_ratio.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = [json.loads(line) for line in (work / "sweep_runs.jsonl").read_text().splitlines()]
    assert [(r["method"], r["ratio"], r["status"]) for r in runs] == [("vanilla", 1.0, 0), ("tango", 0.1, 0)]
    assert "DEMO" in result.stdout and "Video-MME: answered 3, reused 0, failed 0" in result.stdout

    again = sweep("run_eval_ov.sh", "--demo", "--demo-samples", "3", "--ratios", "0.1", "--nframe", "8", cwd=tmp_path)
    assert again.returncode == 0
    assert again.stdout.count("reused 3, failed 0") == 8 and "answered 3" not in again.stdout
    rerun = pd.read_csv(work / "summary.csv")
    same = ["model", "method", "retention_ratio", "benchmark", "accuracy", "samples", "failed", "avg_visual_tokens"]
    assert rerun[same].equals(summary[same])
    assert (rerun["reused"] == 3).all() and (rerun["answered"] == 0).all()


@pytest.mark.parametrize("model", ["llava_video", "qwen2_5_vl"])
def test_demo_sweep_of_the_other_families(model, tmp_path) -> None:
    work = tmp_path / model
    result = sweep(SCRIPTS[model], "--demo", "--demo-samples", "2", "--data", "MVBench", "--ratios", "0.2",
                   "--work-dir", str(work), "--nframe", "8", cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = pd.read_csv(work / "summary.csv")
    assert list(summary["benchmark"]) == ["MVBench", "MVBench"] and (summary["failed"] == 0).all()
    tango = summary[summary["method"] == "tango"].iloc[0]
    details = json.loads(Path(tango["result_file"]).read_text())
    if model == "llava_video":  # the pre-LLM ratio makes the 4 tiny layers average 0.2 (K = 3, p = 0.5)
        assert tango["pre_retain_ratio"] == pytest.approx(float(f"{4 * 0.2 / (3 + 1 * 0.5):.6g}"))
        assert details["avg_visual_tokens_after_intra_llm"] < details["avg_visual_tokens"]
    else:
        assert tango["pre_retain_ratio"] == pytest.approx(0.2)
        assert details["tango_config"]["similarity_threshold"] == 0.8


def test_sweep_refuses_flags_it_sets_and_bad_ratios(tmp_path) -> None:
    bad = sweep("run_eval_ov.sh", "--retain-ratio", "0.3", cwd=tmp_path)
    assert bad.returncode == 2 and "--retain-ratio is set by the sweep" in bad.stderr
    bad = sweep("run_eval_ov.sh", "--ratios", "0.1", "1.5", cwd=tmp_path)
    assert bad.returncode == 2 and "retention ratios must be in (0, 1], got 1.5" in bad.stderr
    bad = sweep("run_eval_ov.sh", "--data", "NotABench", cwd=tmp_path)
    assert bad.returncode == 2 and "Unknown benchmark 'NotABench'" in bad.stderr
    missing = sweep("run_eval_ov.sh", "--model-path", str(tmp_path / "none"), "--data-root", str(tmp_path), cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and not (tmp_path / "outputs" / "llava_onevision" / "tango").exists()

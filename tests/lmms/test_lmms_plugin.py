"""Tango's models in lmms-eval through its plugin entry point, on a tiny model and a local task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lmms_eval")

os.environ["HF_HUB_OFFLINE"] = "1"

QUESTION = "Which colour is the square?\nA. red\nB. white\nC. blue\nD. green"
TASK_YAML = """task: tango_local_mcq
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""
TASK_UTILS = '''def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"accuracy": float(results[0].strip()[:1] == doc["answer"])}
'''


@pytest.fixture(scope="module")
def local_task(tmp_path_factory):
    """A three-question multiple-choice task over generated clips, and a tiny LLaVA-OneVision."""
    from tango_core.models.video import write_video
    from tango_core.testing.tiny_llava import save_tiny_llava

    root = tmp_path_factory.mktemp("lmms")
    task = root / "task"
    task.mkdir()
    rows = []
    for i in range(3):
        frames = np.full((12, 64, 64, 3), 40 * i + 20, np.uint8)
        frames[:, 20:40, 10 + 5 * i : 30 + 5 * i] = 255
        rows.append({"id": i, "video": write_video(str(task / f"clip{i}.mp4"), frames, fps=4), "question": QUESTION, "answer": "B"})
    (task / "data.json").write_text(json.dumps(rows))
    (task / "tango_local.yaml").write_text(TASK_YAML.format(data=task / "data.json"))
    (task / "utils.py").write_text(TASK_UTILS)
    model = save_tiny_llava(str(root / "ov"), "llava_onevision").model
    return {"root": root, "task": task, "model": model, "rows": rows}


def run_lmms(local_task, model: str, model_args: str, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lmms_eval", "--model", model, "--model_args", model_args, "--tasks", "tango_local_mcq",
               "--include_path", str(local_task["task"]), "--batch_size", "1", "--output_path", str(out), "--log_samples",
               "--verbosity", "DEBUG"]  # lmms-eval exits 0 on errors unless DEBUG
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=local_task["root"], env=env, capture_output=True, text=True, timeout=600)


def logged_answers(out: Path):
    samples = next(out.rglob("*tango_local_mcq*.jsonl"))
    return [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]


def test_tango_model_runs_the_task_with_the_profiler(local_task) -> None:
    import torch

    from tango_core import TangoConfig
    from tango_core.models.loader import load_tango_model

    out, profile = local_task["root"] / "out_tango", local_task["root"] / "profile"
    args = f"pretrained={local_task['model']},retention_ratio=0.2,device=cpu,dtype=float32,max_frames_num=4,profile=True,profile_dir={profile}"
    result = run_lmms(local_task, "tango_llava_onevision", args, out)
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = list(out.rglob("*_results.json"))
    metrics = json.loads(results_file.read_text())["results"]["tango_local_mcq"]
    assert "accuracy,none" in metrics and 0.0 <= metrics["accuracy,none"] <= 1.0
    summary = json.loads((profile / "tango_lmms_profile_rank0.json").read_text())
    assert summary["summary"]["requests"] == 3 and len(summary["requests"]) == 3
    assert all(r["visual_tokens_after"] < 4 * 196 for r in summary["requests"])  # pruned: r = 0.2 of 784
    # lmms-eval's logged answers are what the adapter answers for the same clip and question.
    adapter = load_tango_model(local_task["model"], tango=TangoConfig(retention_ratio=0.2), dtype=torch.float32,
                               device="cpu", num_frames=4)
    samples = logged_answers(out)
    assert sorted(s["doc_id"] for s in samples) == [0, 1, 2]
    for sample in samples:
        row = local_task["rows"][sample["doc_id"]]
        expected = adapter.generate(row["video"], row["question"], max_new_tokens=4).text
        assert sample["filtered_resps"] == expected


def test_vanilla_model_and_bad_arguments(local_task) -> None:
    out = local_task["root"] / "out_vanilla"
    result = run_lmms(local_task, "vanilla_llava_onevision", f"pretrained={local_task['model']},device=cpu,dtype=float32,max_frames_num=4", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(s["doc_id"] for s in logged_answers(out)) == [0, 1, 2]
    bad = run_lmms(local_task, "tango_llava_onevision", f"pretrained={local_task['model']},retention_ratio=1.5,device=cpu", local_task["root"] / "bad")
    assert "--retain-ratio must be a number in (0, 1], got 1.5" in bad.stdout + bad.stderr

"""The profiler's records against the adapter's own statistics and the spec's formulas."""

from __future__ import annotations

import csv
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tango_core import TangoConfig  # noqa: E402
from tango_core.models.loader import load_tango_model  # noqa: E402
from tango_core.models.profiling import Profiler, format_summary  # noqa: E402
from tango_core.testing.tiny_llava import save_tiny_llava  # noqa: E402

FRAMES = np.random.default_rng(0).integers(0, 255, (6, 60, 60, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = save_tiny_llava(str(tmp_path_factory.mktemp("profiled") / "ov"), "llava_onevision").model
    return load_tango_model(directory, tango=TangoConfig(retention_ratio=0.2), dtype=torch.float32, device="cpu", num_frames=6)


def test_profiles_every_call_with_the_spec_definitions(model, tmp_path) -> None:
    with Profiler(model) as profiler:
        generations = [model.generate(FRAMES, "What?", max_new_tokens=n) for n in (3, 5)]
    assert "generate" not in vars(model)  # the wrapper is gone after the block
    assert len(profiler.requests) == 2
    for record, generation in zip(profiler.requests, generations):
        times = generation.stats.times_ms
        assert record.vit_ms == times["vit"]
        assert record.other_ms == pytest.approx(times["project"] + times["prune"] + times["splice"])
        assert record.preprocess_ms == pytest.approx(times["load"] + times["preprocess"])
        assert record.prefill_ms == times["prefill"]
        assert record.ttft_reference_ms == pytest.approx(record.vit_ms + record.other_ms + record.prefill_ms)
        assert record.ttft_ms == generation.stats.first_token_ms
        assert record.ttft_reference_ms <= record.ttft_ms <= record.total_ms
        assert record.new_tokens == generation.token_ids.numel()
        assert record.decode_tokens_per_s == pytest.approx(record.new_tokens / ((record.total_ms - record.ttft_ms) / 1e3))
        assert record.visual_tokens_after == generation.stats.visual_tokens_after
    summary = profiler.summary()
    assert summary["requests"] == 2
    assert summary["total_gpu_runtime_s"] == pytest.approx(sum(r.gpu_ms for r in profiler.requests) / 1e3)
    assert summary["avg_vit_ms"] == pytest.approx(sum(r.vit_ms for r in profiler.requests) / 2)
    assert summary["total_runtime_s"] >= summary["total_gpu_runtime_s"] * 0.99
    profiler.to_json(str(tmp_path / "profile.json"))
    profiler.to_csv(str(tmp_path / "profile.csv"))
    saved = json.loads((tmp_path / "profile.json").read_text())
    assert saved["summary"]["requests"] == 2 and len(saved["requests"]) == 2
    with open(tmp_path / "profile.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["vit_ms"]) for r in rows] == [r.vit_ms for r in profiler.requests]
    table = format_summary(summary)
    assert "average time to first token (ms), reference's definition" in table and "token/s" in table

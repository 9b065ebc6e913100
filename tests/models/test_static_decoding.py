"""Decoding on a static cache gives the growing cache's tokens (CUDA graphs replay the same step)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tango_core import TangoConfig  # noqa: E402
from tango_core.models.loader import load_tango_model  # noqa: E402
from tango_core.models.static_decoding import bucket_length  # noqa: E402
from tango_core.testing.tiny_llava import save_tiny_llava  # noqa: E402
from tango_core.testing.tiny_qwen import build_tiny_qwen25vl  # noqa: E402

FRAMES = np.random.default_rng(0).integers(0, 255, (8, 112, 140, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    return {
        "llava_onevision": (save_tiny_llava(str(root / "ov"), "llava_onevision").model, {"num_frames": 8}),
        "qwen2_5_vl": (build_tiny_qwen25vl(str(root / "qwen")), {"video_min_pixels": 4 * 28 * 28}),
    }


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
@pytest.mark.parametrize("ratio", [None, 0.2])
def test_static_cache_matches_dynamic_cache(checkpoints, family, ratio) -> None:
    path, options = checkpoints[family]
    tango = None if ratio is None else TangoConfig(retention_ratio=ratio)
    model = load_tango_model(path, tango=tango, dtype=torch.float32, device="cpu", **options)
    model.stop_token_ids = []  # decode the whole budget
    results = {}
    for mode in ("dynamic", "static"):
        model.decoding = mode
        results[mode] = model.decode(model.prepare(FRAMES, "What happens?"), 12, keep_logits=True)
    assert torch.equal(results["static"][0], results["dynamic"][0])
    torch.testing.assert_close(results["static"][1], results["dynamic"][1], rtol=1e-4, atol=1e-4)
    assert model._static.entries  # the static path really ran
    again = model.decode(model.prepare(FRAMES, "What happens?"), 12)[0]  # a reused cache needs no clearing
    assert torch.equal(again, results["dynamic"][0])


def test_bucket_length() -> None:
    assert [bucket_length(n) for n in (1, 1024, 1025, 5000)] == [1024, 1024, 2048, 5120]

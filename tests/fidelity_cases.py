"""The reference implementation's fidelity cases (``tests/data/fidelity``), loaded one way for every test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from tango_core import TangoConfig

DATA = Path(__file__).parent / "data" / "fidelity"
CASES: List[dict] = json.loads((DATA / "cases.json").read_text())
CASE_IDS = [f"case{c['idx']:02d}-{c['seg']}" for c in CASES]


def case_config(case: dict, **overrides) -> TangoConfig:
    """The TangoConfig the reference ran ``case`` with (k = 7, alpha 1.5, beta 0.6: the defaults)."""
    return TangoConfig(
        retention_ratio=case["r"],
        similarity_threshold=case["tau"],
        context_ratio=case["ctx"],
        segmenter=case["seg"],
        sink_positions=tuple(case["sink"]),
        **overrides,
    )


def case_arrays(case: dict) -> Dict[str, np.ndarray]:
    """feats (N, L, D), sal (N, L), ts (N,), keep (K,), kept_feats (K, D) of ``case``."""
    return dict(np.load(DATA / f"case{case['idx']:02d}.npz"))

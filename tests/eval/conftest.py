"""Fixtures of the evaluation-harness tests: one offline VLMEvalKit per test session.

VLMEvalKit is imported once (about 12 s) with its hub cache pointed at a session folder that the
tests fill with generated benchmarks; nothing reaches the network.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

# Not pytest.importorskip("vlmeval"): that imports vlmeval at collection, before
# configure_environment() and without import_vlmeval()'s SSL restore (which then never runs).
if importlib.util.find_spec("vlmeval") is None:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """An empty, writable data root (its ``hub`` folder is the Hugging Face cache VLMEvalKit reads)."""
    return tmp_path_factory.mktemp("benchmark_data")


@pytest.fixture(scope="session")
def vlmeval_module(data_root: Path, tmp_path_factory):
    """``vlmeval`` imported offline, reading benchmarks from ``data_root``."""
    from tango_eval.vlmeval_env import configure_environment, import_vlmeval

    configure_environment(str(data_root), offline=True, lmu_data=str(tmp_path_factory.mktemp("lmu_data")))
    return import_vlmeval()

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



@pytest.fixture(scope="module")
def demo(data_root: Path, vlmeval_module):
    """The four demo benchmarks, written once into the session's data root."""
    from tango_eval.demo_data import write_demo_benchmarks

    from demo_settings import SAMPLES

    return write_demo_benchmarks(data_root, samples_per_benchmark=SAMPLES, seed=0)


@pytest.fixture(scope="module")
def datasets(demo, vlmeval_module):
    """VLMEvalKit's dataset object of each benchmark, built as the runner builds them (8 frames)."""
    import vlmeval.dataset

    from tango_eval.benchmarks import BENCHMARKS, PAPER_BENCHMARKS, dataset_entry
    from tango_eval.vlmeval_env import captured_output, no_hub_login

    built = {}
    for name in PAPER_BENCHMARKS:
        entry = dataset_entry(BENCHMARKS[name], nframe=8)
        cls = getattr(vlmeval.dataset, str(entry.pop("class")))
        with no_hub_login(), captured_output(name):
            built[name] = cls(**entry)
    return built

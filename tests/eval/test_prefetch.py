"""The prefetcher: samples in order, failures delivered with their sample, work done ahead."""

from __future__ import annotations

import threading
import time

import pytest

from tango_eval.prefetch import Prefetcher, PreparedSample


def collect(depth: int, fail: str = "3"):
    started = []

    def prepare(index: str) -> PreparedSample:
        started.append((index, threading.current_thread().name, time.perf_counter()))
        if index == fail:
            raise ValueError(f"cannot decode sample {index}")
        return PreparedSample(index, [{"type": "text", "value": index}], None, 0.0)

    answers = []
    with Prefetcher(prepare, [str(i) for i in range(6)], depth) as prefetcher:
        for sample in prefetcher:
            try:
                answers.append(sample.result().index)
            except ValueError as error:
                answers.append(str(error))
            time.sleep(0.02)  # the "GPU" answering the current sample
    return answers, started


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_order_and_failures(depth) -> None:
    answers, started = collect(depth)
    assert answers == ["0", "1", "2", "cannot decode sample 3", "4", "5"]
    assert sorted(i for i, _, _ in started) == [str(i) for i in range(6)]  # each prepared exactly once


def test_work_runs_ahead_in_threads() -> None:
    _, started = collect(2)
    assert all(name.startswith("prefetch") for _, name, _ in started)
    first = {index: at for index, _, at in started}
    assert first["2"] < first["0"] + 0.02  # sample 2 was being prepared while sample 0 was answered


def test_inline_without_depth() -> None:
    _, started = collect(0)
    assert {name for _, name, _ in started} == {threading.current_thread().name}

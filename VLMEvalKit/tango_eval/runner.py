"""The evaluation loop: VLMEvalKit's datasets and scoring, with answers that are never lost.

For one (model, dataset) pair, every process:

1. builds the dataset with VLMEvalKit's own class (rank 0 first: it may write the dataset's TSV);
2. reads every record written so far (any rank, any earlier run) and, after a barrier, takes its
   share ``pending[rank::world_size]`` of the samples that still lack an answer;
3. answers them one by one, appending a record the moment each finishes; a sample that fails (an
   undecodable video, say) is recorded as failed with its reason, and the loop goes on.

Rank 0 then writes VLMEvalKit's prediction file (``<model>_<dataset>.xlsx``), scores it with
VLMEvalKit's ``evaluate`` by exact matching in a fresh folder (``evaluate`` would otherwise reuse a
stale score file), and writes ``<model>_<dataset>_tango.json`` (counts, token statistics).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
from tqdm import tqdm

from tango_core.models.profiling import Profiler

from .benchmarks import Benchmark
from .distributed import Processes
from .prefetch import Prepared, PreparedSample, Prefetcher
from .records import FAILED_ANSWER, RecordStore, SampleRecord
from .vlmeval_env import captured_output, import_vlmeval, no_hub_login, skip_unused_frame_decoding

LOG = logging.getLogger("tango_eval")


@dataclass(frozen=True)
class DatasetRequest:
    """One dataset to evaluate: ``key`` names its files; ``entry`` is its VLMEvalKit config entry."""

    key: str
    benchmark: Benchmark
    entry: Mapping[str, Any]


@dataclass(frozen=True)
class RunOptions:
    """How to run (not what to compute).

    mode: VLMEvalKit's ``all`` / ``infer`` / ``eval``. limit: the first N samples of each dataset
    only. keep_failed: do not retry samples that failed in an earlier run. fresh: discard earlier
    records. max_consecutive_failures: give up on a dataset after that many failures in a row
    (something is wrong with every sample, not with one video). prefetch: samples prepared ahead
    in background threads (prompt and decoded video; 0: everything in order on this thread).
    profile: record spec section 9's efficiency metrics of every answered sample.
    """

    mode: str = "all"
    limit: Optional[int] = None
    keep_failed: bool = False
    fresh: bool = False
    verbose: bool = False
    max_consecutive_failures: int = 8
    prefetch: int = 2
    profile: bool = False


@dataclass
class DatasetOutcome:
    """What a dataset's run did (rank 0's view; other ranks see their own counts only)."""

    key: str
    samples: int = 0
    answered: int = 0
    reused: int = 0
    failed: int = 0
    accuracy: Optional[float] = None
    summary_file: Optional[Path] = None

    def line(self) -> str:
        return f"{self.key}: answered {self.answered}, reused {self.reused}, failed {self.failed}"


class DatasetFailed(RuntimeError):
    """A whole dataset could not be evaluated (not one sample: those are recorded and skipped)."""


def build_dataset(entry: Mapping[str, Any]):
    """A VLMEvalKit dataset from a config entry, as VLMEvalKit's runner builds it (offline-safe)."""
    vlmeval = import_vlmeval()
    config = dict(entry)
    name = config.pop("class")
    cls = getattr(vlmeval.dataset, name, None)
    if cls is None:
        raise DatasetFailed(f"Dataset class {name!r} is not in vlmeval.dataset.")
    accepted = inspect.signature(cls.__init__).parameters
    arguments = {k: v for k, v in config.items() if k in accepted}
    with no_hub_login(), captured_output(f"{name} preparation"):
        dataset = cls(**arguments)
    skip_unused_frame_decoding(dataset)
    return dataset


def _settings_file(store: RecordStore) -> Path:
    return store.folder / "settings.json"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"model": {"retain_ratio": 0.1}}`` -> ``{"model.retain_ratio": 0.1}``."""
    flat: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_settings(store: RecordStore, settings: Dict[str, Any], fresh: bool) -> None:
    """Refuse to mix answers computed under other settings into this run's records."""
    path = _settings_file(store)
    if fresh:
        store.clear()
        path.unlink(missing_ok=True)
        return
    if not path.exists() or not store.files():
        return
    earlier = _flatten(json.loads(path.read_text()))
    now = _flatten(json.loads(json.dumps(settings)))
    if earlier != now:
        changed = sorted(k for k in set(earlier) | set(now) if earlier.get(k) != now.get(k))
        raise DatasetFailed(
            f"{store.folder} holds answers computed with other settings ({', '.join(changed)} differ); "
            "use another --work-dir, or --fresh to discard them."
        )


def _mean(values: List[Optional[float]]) -> Optional[float]:
    present = [float(v) for v in values if v is not None]
    return float(np.mean(present)) if present else None


class DatasetRunner:
    """Runs one model over datasets (one process of possibly several)."""

    def __init__(self, model, model_name: str, work_dir: Path, processes: Processes, options: RunOptions) -> None:
        self.model = model
        self.model_name = model_name
        self.model_dir = Path(work_dir) / model_name
        self.processes = processes
        self.options = options
        self.run_id = uuid.uuid4().hex  # unique per process and run: tells reused records from new ones

    # -- files ---------------------------------------------------------------------------------

    def prediction_file(self, key: str) -> Path:
        from vlmeval.smp import get_pred_file_path

        return Path(get_pred_file_path(str(self.model_dir), self.model_name, key, use_env_format=True))

    def summary_file(self, key: str) -> Path:
        return self.model_dir / f"{self.model_name}_{key}_tango.json"

    def store(self, key: str) -> RecordStore:
        return RecordStore(self.model_dir / "records" / key, self.processes.rank)

    # -- one dataset ---------------------------------------------------------------------------

    def _together(self, step, on_all: bool = True):
        """Run ``step`` (on every process, or on rank 0 only), then learn whether every process
        succeeded; a failure anywhere raises everywhere, so no process waits for one that gave up."""
        result, error = None, None
        if on_all or self.processes.is_main:
            try:
                result = step()
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as caught:  # noqa: BLE001 - re-raised below, after the others know
                error = caught
        if not self.processes.all_ok(error is None):
            if error is not None:
                raise error
            raise DatasetFailed("another process failed on this dataset (see its log); finished samples are kept")
        return result

    def run(self, request: DatasetRequest) -> DatasetOutcome:
        """Infer and/or score one dataset; raises DatasetFailed when the dataset cannot be done."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        store = self.store(request.key)
        settings = {"model": self.model.settings.fingerprint(), "dataset": dict(request.entry)}
        settings["model"].pop("nframe", None)  # the dataset's frame setting decides
        settings["model"].pop("fps", None)

        def prepare_first():  # rank 0 first: VLMEvalKit may write the dataset's TSV
            dataset = build_dataset(request.entry)
            check_settings(store, settings, self.options.fresh)
            store.folder.mkdir(parents=True, exist_ok=True)
            _settings_file(store).write_text(json.dumps(settings, indent=1, sort_keys=True))
            return dataset

        dataset = self._together(prepare_first, on_all=False)

        def prepare_rest():
            built = dataset if self.processes.is_main else build_dataset(request.entry)
            if self.options.limit is not None:
                built.data = built.data.iloc[: int(self.options.limit)].reset_index(drop=True)
            indices = [str(i) for i in built.data["index"]]
            wanted = set(indices)
            return built, indices, {k: r for k, r in store.load().items() if k in wanted}

        # Everyone has read the same records before anyone writes new ones.
        dataset, indices, before = self._together(prepare_rest)
        if self.options.mode != "eval":
            done = {k for k, r in before.items() if not r.failed or self.options.keep_failed}
            pending = [i for i in indices if i not in done]
            mine = pending[self.processes.rank :: self.processes.world_size]
            self._together(lambda: self._answer(dataset, request.key, indices, mine, store))
        outcome = self._together(lambda: self._finish(dataset, request, store, before), on_all=False)
        return outcome if outcome is not None else DatasetOutcome(request.key, samples=len(indices))

    def _apply_frame_setting(self, dataset) -> None:
        """A dataset's own frame count or rate overrides the model's (VLMEvalKit's rule)."""
        if dataset.nframe > 0:
            self.model.nframe, self.model.fps = int(dataset.nframe), None
        elif dataset.fps > 0:
            self.model.nframe, self.model.fps = None, float(dataset.fps)

    def _answer(self, dataset, key: str, indices: List[str], mine: List[str], store: RecordStore) -> None:
        """Answer this process's share, one durable record per sample.

        The next samples' prompts are built and their videos decoded in background threads
        (:class:`~tango_eval.prefetch.Prefetcher`) while the current one is answered.
        """
        row_of = {index: row for row, index in enumerate(indices)}
        self._apply_frame_setting(dataset)
        consecutive_failures = 0
        prepared = Prefetcher(lambda index: self._prepare(dataset, index, row_of[index]), mine, self.options.prefetch)
        progress = tqdm(
            prepared,
            total=len(mine),
            desc=f"{key} (rank {self.processes.rank} of {self.processes.world_size})" if self.processes.world_size > 1 else key,
            unit="sample",
            disable=not self.processes.is_main,
            dynamic_ncols=True,
        )
        profiler = Profiler() if self.options.profile else None
        loop_started = time.perf_counter()
        with prepared:
            for sample in progress:
                record = self._answer_one(key, sample, profiler)
                store.append(record)
                if self.options.verbose:
                    LOG.info("%s #%s: %s", key, sample.index, record.prediction)
                if not record.failed:
                    consecutive_failures = 0
                    continue
                consecutive_failures += 1
                LOG.warning("%s sample %s failed: %s", key, sample.index, record.error)
                if consecutive_failures >= self.options.max_consecutive_failures:
                    raise DatasetFailed(
                        f"{key}: {consecutive_failures} samples in a row failed (last: {record.error}); fix the cause "
                        "and run again: every finished sample is kept."
                    )
        if profiler is not None and profiler.requests:
            self._write_profile(key, profiler, time.perf_counter() - loop_started)

    def _write_profile(self, key: str, profiler: Profiler, loop_s: float) -> None:
        """This process's profile of this run (spec section 9): JSON, CSV and a table in the log."""
        stem = self.model_dir / f"{self.model_name}_{key}_profile_rank{self.processes.rank}"
        profiler.to_json(str(stem.with_suffix(".json")), total_runtime_s=loop_s)
        profiler.to_csv(str(stem.with_suffix(".csv")))
        LOG.info("%s profile (rank %d, %d samples answered in this run; %s.json):\n%s", key, self.processes.rank,
                 len(profiler.requests), stem, profiler.table(total_runtime_s=loop_s))

    def _prepare(self, dataset, index: str, row: int) -> PreparedSample:
        """The dataset's own prompt for one sample and its decoded video (runs in a worker thread)."""
        start = time.perf_counter()
        message = dataset.build_prompt(row, video_llm=True)
        videos = [item["value"] for item in message if item["type"] == "video"]
        for path in videos:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"video file not found: {path}")
        clip = self.model.load_clip(videos[0]) if len(videos) == 1 else None
        return PreparedSample(index, message, clip, time.perf_counter() - start)

    def _answer_one(self, key: str, sample: "Prepared", profiler: Optional[Profiler] = None) -> SampleRecord:
        """Answer one prepared sample; any failure (preparing or answering) becomes a failed record."""
        import torch

        start = time.perf_counter()
        base = {"index": sample.index, "rank": self.processes.rank, "run_id": self.run_id}
        try:
            prepared = sample.result()
            if profiler is None:
                prediction = self.model.answer(prepared.message, key, prepared.clip)
            else:
                with profiler.record() as slot:
                    prediction = self.model.answer(prepared.message, key, prepared.clip)
                    slot["generation"] = self.model.last_generation
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # noqa: BLE001 - any failure of one sample is that sample's
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            reason = f"{type(error).__name__}: {error}".strip()
            return SampleRecord(prediction=FAILED_ANSWER, failed=True, error=reason[:2000],
                                wall_s=time.perf_counter() - start, **base)
        stats = self.model.last_generation.stats
        return SampleRecord(
            prediction=str(prediction),
            visual_tokens_before=int(stats.visual_tokens_before),
            visual_tokens_after=int(stats.visual_tokens_after),
            visual_tokens_after_intra_llm=stats.visual_tokens_after_intra_llm,
            num_frames=int(stats.num_frames),
            times_ms={**{k: float(v) for k, v in stats.times_ms.items()}, "prepare": 1e3 * prepared.prepare_s},
            wall_s=time.perf_counter() - start,
            **base,
        )

    # -- rank 0: predictions, scores, summary --------------------------------------------------

    def _finish(self, dataset, request: DatasetRequest, store: RecordStore, before: Dict[str, SampleRecord]) -> DatasetOutcome:
        from vlmeval.smp import dump

        key = request.key
        indices = [str(i) for i in dataset.data["index"]]
        final = store.load()
        missing = [i for i in indices if i not in final]
        if missing:
            raise DatasetFailed(
                f"{key}: {len(missing)} of {len(indices)} samples have no answer yet (e.g. index {missing[0]}); "
                "run without --mode eval to answer them."
            )
        outcome = DatasetOutcome(key, samples=len(indices))
        for index in indices:
            record = final[index]
            if index in before and before[index].run_id == record.run_id:  # run ids are per process and run
                outcome.reused += 1
            elif record.failed:
                outcome.failed += 1
            else:
                outcome.answered += 1
        prediction_file = self.prediction_file(key)
        meta = dataset.data.copy()
        meta["prediction"] = [final[i].prediction for i in indices]
        if "image" in meta:
            meta.pop("image")
        dump(meta, str(prediction_file))
        if not prediction_file.exists():  # VLMEvalKit's dump falls back to a .pkl when a format's writer fails
            raise RuntimeError(
                f"VLMEvalKit could not write {prediction_file} (its dump fell back to "
                f"{prediction_file.with_suffix('.pkl').name}); for .xlsx it needs xlsxwriter: `pip install xlsxwriter`, "
                "then run again (the answers are kept and reused)."
            )
        score_files: List[str] = []
        if self.options.mode != "infer":
            score_files = self._score(dataset, prediction_file)
            outcome.accuracy = self._accuracy(request.benchmark, prediction_file)
        records = [final[i] for i in indices]
        ok = [r for r in records if not r.failed]
        s = self.model.settings
        tango = self.model.tango_config
        summary = {
            "model": self.model_name,
            "method": s.method,
            "retention_ratio": float(s.retain_ratio) if s.method == "tango" else 1.0,
            "pre_retain_ratio": float(tango.retention_ratio) if tango is not None else None,
            "benchmark": request.benchmark.name,
            "dataset": key,
            "samples": len(indices),
            "answered": outcome.answered,
            "reused": outcome.reused,
            "failed": sum(r.failed for r in records),
            "failed_samples": {r.index: r.error for r in records if r.failed},
            "accuracy": outcome.accuracy,
            "avg_visual_tokens": _mean([r.visual_tokens_after for r in ok]),
            "avg_visual_tokens_before": _mean([r.visual_tokens_before for r in ok]),
            "avg_visual_tokens_after_intra_llm": _mean([r.visual_tokens_after_intra_llm for r in ok]),
            "avg_frames": _mean([r.num_frames for r in ok]),
            "avg_times_ms": {name: _mean([r.times_ms.get(name) for r in ok]) for name in sorted({n for r in ok for n in r.times_ms})},
            "demo": bool(s.demo),
            "prediction_file": prediction_file.name,
            "score_files": score_files,
            "settings": s.to_dict(),
            "tango_config": None if tango is None else {k: getattr(tango, k) for k in tango.__dataclass_fields__},
            "dataset_entry": dict(request.entry),
        }
        summary_file = self.summary_file(key)
        summary_file.write_text(json.dumps(summary, indent=1, default=str))
        outcome.summary_file = summary_file
        return outcome

    def _score(self, dataset, prediction_file: Path) -> List[str]:
        """VLMEvalKit's ``evaluate`` by exact matching, in a fresh folder; its files are moved beside the predictions."""
        scratch = self.model_dir / ".scoring" / prediction_file.stem
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        copy = scratch / prediction_file.name
        shutil.copy2(prediction_file, copy)
        with captured_output(f"{prediction_file.stem} evaluation"):
            dataset.evaluate(str(copy), model="exact_matching", nproc=1)
        written = []
        for produced in sorted(scratch.iterdir()):
            if produced.name == copy.name:
                continue
            target = self.model_dir / produced.name
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(produced), str(target))
            written.append(produced.name)
        shutil.rmtree(scratch, ignore_errors=True)
        return written

    def _accuracy(self, benchmark: Benchmark, prediction_file: Path) -> Optional[float]:
        """The headline accuracy (percent) from VLMEvalKit's score files."""
        from .scores import benchmark_accuracy

        return benchmark_accuracy(benchmark.name, self.model_dir, prediction_file.name)

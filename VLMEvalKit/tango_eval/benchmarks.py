"""The four video benchmarks of the paper, as VLMEvalKit 0.0.20 names, builds and stores them.

Plain data only (no VLMEvalKit import), so that names and data folders are checked before anything
heavy is loaded. Each VLMEvalKit dataset class finds its raw data in the Hugging Face hub cache
(``datasets--<org>--<name>/refs/<branch>`` -> ``snapshots/<hash>/``) and writes a ``<name>.tsv``
index into that snapshot folder on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple


@dataclass(frozen=True)
class Benchmark:
    """One benchmark.

    name: the paper's name (``Video-MME``). dataset: VLMEvalKit's dataset name, used in its file
    names (``Video-MME``, ``MVBench_MP4``). cls: VLMEvalKit's class in ``vlmeval.dataset``.
    repo_id / branch: the Hugging Face dataset VLMEvalKit reads. options: constructor arguments
    beyond ``dataset`` and the frame setting. files: what must be in the snapshot (for messages).
    """

    name: str
    dataset: str
    cls: str
    repo_id: str
    branch: str = "main"
    options: Mapping[str, object] = field(default_factory=dict)
    files: Tuple[str, ...] = ()

    def cache_folder(self, hub_cache: Path) -> Path:
        """``datasets--<org>--<name>`` inside the hub cache."""
        org, repo = self.repo_id.split("/")
        return Path(hub_cache) / f"datasets--{org}--{repo}"

    def download_hint(self, hub_cache: Path) -> str:
        """A command that puts this benchmark where VLMEvalKit looks for it."""
        revision = f" --revision {self.branch}" if self.branch != "main" else ""
        return (
            f"huggingface-cli download {self.repo_id} --repo-type dataset{revision} --cache-dir {hub_cache}"
        )


BENCHMARKS: Dict[str, Benchmark] = {
    "Video-MME": Benchmark(
        "Video-MME", "Video-MME", "VideoMME", "lmms-lab/Video-MME",
        options={"use_subtitle": False},
        files=("videomme/test-00000-of-00001.parquet", "video/<videoID>.mp4 (or video*.zip)"),
    ),
    "MVBench": Benchmark(
        "MVBench", "MVBench_MP4", "MVBench_MP4", "OpenGVLab/MVBench", branch="video",
        files=("test.json", "video/<task>/..."),
    ),
    "MLVU": Benchmark(
        "MLVU", "MLVU_MCQ", "MLVU_MCQ", "MLVU/MVLU",
        files=("MLVU/json/*.json", "MLVU/video/<task>/..."),
    ),
    "LongVideoBench": Benchmark(
        "LongVideoBench", "LongVideoBench", "LongVideoBench", "longvideobench/LongVideoBench",
        # VLMEvalKit's flag is inverted for frame input; video input ignores it. False = no subtitles.
        options={"use_subtitle": False},
        files=("lvb_val.json", "videos/..."),
    ),
}
PAPER_BENCHMARKS: Tuple[str, ...] = tuple(BENCHMARKS)

_ALIASES: Dict[str, str] = {}
for _benchmark in BENCHMARKS.values():
    for _alias in (_benchmark.name, _benchmark.dataset, _benchmark.cls):
        _ALIASES[_alias.lower().replace("-", "").replace("_", "")] = _benchmark.name
_ALIASES["videomme"] = "Video-MME"
_ALIASES["mlvumcq"] = "MLVU"


class UnknownBenchmark(ValueError):
    """A benchmark name that is none of the four."""


def resolve_benchmark(name: str) -> Benchmark:
    """The benchmark for a plain name (``MVBench``) or a VLMEvalKit name (``MVBench_MP4``), any case."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in _ALIASES:
        raise UnknownBenchmark(
            f"Unknown benchmark {name!r}: choose from {', '.join(PAPER_BENCHMARKS)} "
            f"(or VLMEvalKit's names {', '.join(b.dataset for b in BENCHMARKS.values())})."
        )
    return BENCHMARKS[_ALIASES[key]]


def frame_setting(nframe: Optional[int], fps: Optional[float]) -> Dict[str, object]:
    """VLMEvalKit's frame arguments: exactly one of ``nframe`` / ``fps`` (the other disabled)."""
    if (nframe is None) == (fps is None):
        raise ValueError("Give a dataset exactly one of nframe (frames per video) or fps (frames per second).")
    return {"nframe": int(nframe), "fps": -1} if nframe is not None else {"nframe": 0, "fps": float(fps)}


def dataset_entry(benchmark: Benchmark, nframe: Optional[int] = None, fps: Optional[float] = None) -> Dict[str, object]:
    """A ``--config`` data entry (VLMEvalKit's format) for ``benchmark``."""
    entry: Dict[str, object] = {"class": benchmark.cls, "dataset": benchmark.dataset, **benchmark.options}
    setting = frame_setting(nframe, fps)
    key = "nframe" if setting["nframe"] else "fps"
    entry[key] = setting[key]
    return entry


def missing_data(benchmark: Benchmark, hub_cache: Path) -> Optional[str]:
    """Why the benchmark's data cannot be read from ``hub_cache`` (None when it looks present)."""
    folder = benchmark.cache_folder(hub_cache)
    ref = folder / "refs" / benchmark.branch
    if not ref.is_file():
        return (
            f"{benchmark.name} data not found: VLMEvalKit looks for {ref} (Hugging Face dataset "
            f"{benchmark.repo_id}, branch {benchmark.branch}). Get it with `{benchmark.download_hint(hub_cache)}`, "
            "or pass --data-root with the folder that holds it."
        )
    snapshot = folder / "snapshots" / ref.read_text().strip()
    if not snapshot.is_dir():
        return f"{benchmark.name}: {ref} names snapshot {snapshot.name}, which is missing; download the dataset again."
    if not os.access(snapshot, os.W_OK) and not (snapshot / f"{benchmark.dataset}.tsv").exists():
        return (
            f"{benchmark.name}: VLMEvalKit writes {benchmark.dataset}.tsv into {snapshot} on first use, but the "
            "folder is read-only; copy the benchmark to a writable folder and pass it as --data-root."
        )
    return None


"""Per-sample records: every answer is on disk the moment it exists.

VLMEvalKit dumps a rank's answers only every 20 samples, in a file named after the world size.
Here each process appends one JSON line per finished sample to its own file
(``<folder>/rank<k>.jsonl``), flushed and synced, and every process of a later run reads all of
them, whatever the world size was: a run killed at any point loses nothing it finished.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

# What VLMEvalKit's scoring receives for a sample that could not be answered. An empty string
# would be read back as NaN (MVBench counts it correct, MLVU crashes); an uppercase A-E letter
# would be taken as an option; a plain word can contain an option's text, which MVBench and MLVU
# fall back to matching. A standalone "Z" is VLMEvalKit's own "no option" answer, tried first.
FAILED_ANSWER = "[failed: Z]"
EMPTY_ANSWER = "[empty: Z]"


@dataclass
class SampleRecord:
    """One finished sample.

    index: the dataset's ``index`` value (as a string). prediction: the answer VLMEvalKit scores.
    failed: the sample could not be answered; error says why. The token counts and times come from
    the adapter's statistics (None for failed samples); wall_s is the whole sample's wall time.
    """

    index: str
    prediction: str
    failed: bool = False
    error: Optional[str] = None
    visual_tokens_before: Optional[int] = None
    visual_tokens_after: Optional[int] = None
    visual_tokens_after_intra_llm: Optional[int] = None
    num_frames: Optional[int] = None
    times_ms: Dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    rank: int = 0
    run_id: str = ""

    @classmethod
    def from_json(cls, text: str) -> "SampleRecord":
        data = json.loads(text)
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


class RecordStore:
    """The records of one (model, dataset) run: a folder of per-rank JSON-lines files."""

    def __init__(self, folder: Path, rank: int = 0) -> None:
        self.folder = Path(folder)
        self.rank = int(rank)

    @property
    def path(self) -> Path:
        """This process's file."""
        return self.folder / f"rank{self.rank}.jsonl"

    def files(self) -> List[Path]:
        """Every rank's file, of this run and earlier ones."""
        return sorted(self.folder.glob("rank*.jsonl")) if self.folder.is_dir() else []

    def _lines(self) -> Iterator[SampleRecord]:
        for path in self.files():
            with path.open() as handle:
                for line in handle:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        yield SampleRecord.from_json(line)
                    except (ValueError, TypeError):  # a line torn by a kill: that sample is redone
                        continue

    def load(self) -> Dict[str, SampleRecord]:
        """The latest record of each sample: an answer beats a failure, a later failure an earlier one."""
        latest: Dict[str, SampleRecord] = {}
        for record in self._lines():
            previous = latest.get(record.index)
            if previous is not None and not previous.failed and record.failed:
                continue
            latest[record.index] = record
        return latest

    def append(self, record: SampleRecord) -> None:
        """Write ``record`` durably (one line, flushed and synced)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(asdict(record), sort_keys=True)
        with self.path.open("a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # the previous writer was killed mid-line
                    handle.write(b"\n")
            handle.write(text.encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())

    def clear(self) -> None:
        """Delete every record (``--fresh``)."""
        for path in self.files():
            path.unlink()

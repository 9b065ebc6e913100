"""Preparing the next samples while the current one is answered.

Building VLMEvalKit's prompt and decoding a video (LongVideoBench's prompt no longer decodes
frames for video models: ``vlmeval_env.skip_unused_frame_decoding``) take
as long as the GPU's work on a pruned sample, and need no GPU: worker threads do them ahead, in
order, a few samples deep. Failures are kept with their sample and raised when it is answered.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Deque, Iterator, List, Optional


@dataclass
class PreparedSample:
    """index: the dataset's index; message: VLMEvalKit's prompt; clip: the decoded frames (None
    when the message holds no single video); prepare_s: seconds it took to prepare."""

    index: str
    message: List[dict]
    clip: Optional[Any]
    prepare_s: float


class Prepared:
    """One sample in the pipeline: ``result()`` gives its :class:`PreparedSample` or raises what preparing raised."""

    def __init__(self, index: str, future: Future) -> None:
        self.index = index
        self._future = future

    def result(self) -> PreparedSample:
        return self._future.result()


class Prefetcher:
    """Iterates ``indices`` in order, preparing up to ``depth`` samples ahead in ``depth`` threads.

    ``depth=0`` prepares each sample on the calling thread when it is reached.
    """

    def __init__(self, prepare: Callable[[str], PreparedSample], indices: List[str], depth: int = 2) -> None:
        self.prepare = prepare
        self.indices = list(indices)
        self.depth = max(0, int(depth))
        self.pool = ThreadPoolExecutor(max_workers=self.depth, thread_name_prefix="prefetch") if self.depth else None

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __len__(self) -> int:
        return len(self.indices)

    def _here(self, index: str) -> Prepared:
        future: Future = Future()
        try:
            future.set_result(self.prepare(index))
        except Exception as error:  # noqa: BLE001 - delivered with the sample
            future.set_exception(error)
        return Prepared(index, future)

    def __iter__(self) -> Iterator[Prepared]:
        if self.pool is None:
            for index in self.indices:
                yield self._here(index)
            return
        upcoming = iter(self.indices)
        pending: Deque[Prepared] = deque(Prepared(i, self.pool.submit(self.prepare, i)) for i in islice(upcoming, self.depth + 1))
        while pending:
            current = pending.popleft()
            following = next(upcoming, None)
            if following is not None:
                pending.append(Prepared(following, self.pool.submit(self.prepare, following)))
            yield current

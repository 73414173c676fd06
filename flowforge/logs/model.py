"""One captured line of task output, and the store that keeps them.

Every line of a run has a position `pos`: dense, from 1, in the order the lines reached the
run's live stream (assigned atomically with that write), so "every line after pos N" is how a
reader resumes, whichever store or stream it reads from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

STREAMS = ("stdout", "stderr", "log", "system")  # `log`: the logging module; `system`: FlowForge's own notes


@dataclass(frozen=True, slots=True)
class LogLine:
    tenant: str
    run_id: str
    pos: int  # the line's place in its run, from 1
    task: str  # the task key (a mapped task's key includes its index)
    attempt: int
    ts: float  # unix seconds, when the line was written
    stream: str  # one of STREAMS
    line: str


@dataclass(frozen=True)
class Filter:
    """Which of a run's lines a reader wants: one task's, one attempt's, or all."""

    task: str | None = None
    attempt: int | None = None

    def __call__(self, line: LogLine) -> bool:
        return (self.task is None or line.task == self.task) and (self.attempt is None or line.attempt == self.attempt)


class LogStore(Protocol):
    """Where lines are kept for `retention_days`. Writes are idempotent on (run_id, pos): a
    batch written twice (the writer retried after a crash) stores each line once, and reads
    never return a line twice."""

    async def start(self) -> None:
        """Create the schema if missing."""

    async def write(self, lines: Sequence[LogLine]) -> None:
        """Keep a batch of lines (any runs, any order)."""

    async def read(self, tenant: str, run_id: str, *, after: int = 0, limit: int = 1000,
                   task: str | None = None, attempt: int | None = None) -> list[LogLine]:
        """The run's lines with pos > `after`, in pos order, at most `limit`; only the tenant's."""

    async def last_pos(self, tenant: str, run_id: str) -> int:
        """The highest pos kept for the run (0: none)."""

    async def purge(self, older_than: float, batch: int = 10_000) -> int:
        """Delete up to `batch` lines written before `older_than` (unix seconds); how many went.
        A store whose database expires lines itself (a TTL) deletes nothing and returns 0."""

    async def close(self) -> None: ...

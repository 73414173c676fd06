"""Armed timers of the runs this coordinator holds. Their truth is the task row (`timer`,
`timer_at`); this heap only makes them fire on time, and is rebuilt when a run is loaded."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass(order=True, frozen=True)
class Timer:
    at: float
    run_id: str = field(compare=False)
    key: str = field(compare=False)
    attempt: int = field(compare=False)
    kind: str = field(compare=False)


class Timers:
    """A heap of timers, each armed at most once: arming the same (run, task, attempt, kind)
    again moves it (a reload re-arms what is already armed; a cancel pushes a deadline)."""

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._armed: dict[tuple[str, str, int, str], float] = {}
        self._by_run: dict[str, set[tuple[str, str, int, str]]] = {}

    def arm(self, timer: Timer) -> None:
        ident = (timer.run_id, timer.key, timer.attempt, timer.kind)
        if self._armed.get(ident) == timer.at:
            return
        self._armed[ident] = timer.at
        self._by_run.setdefault(timer.run_id, set()).add(ident)
        heapq.heappush(self._heap, timer)
        if len(self._heap) > 2 * len(self._armed) + 1024:
            self._compact()

    def due(self, now: float, limit: int) -> list[Timer]:
        out = []
        while self._heap and self._heap[0].at <= now and len(out) < limit:
            t = heapq.heappop(self._heap)
            ident = (t.run_id, t.key, t.attempt, t.kind)
            if self._armed.get(ident) == t.at:  # else it was moved
                self._disarm(ident)
                out.append(t)
        return out

    def armed_for(self, run_id: str) -> bool:
        """Whether the run has a timer armed."""
        return run_id in self._by_run

    def disarm_runs(self, run_ids: set[str]) -> None:
        """Forget the timers of runs no longer held (loading a run arms them again)."""
        for run_id in run_ids:
            for ident in self._by_run.pop(run_id, ()):
                self._armed.pop(ident, None)

    def _disarm(self, ident: tuple[str, str, int, str]) -> None:
        del self._armed[ident]
        idents = self._by_run.get(ident[0])
        if idents is not None:
            idents.discard(ident)
            if not idents:
                del self._by_run[ident[0]]

    def _compact(self) -> None:
        self._heap = [t for t in self._heap if self._armed.get((t.run_id, t.key, t.attempt, t.kind)) == t.at]
        heapq.heapify(self._heap)

    def next_at(self) -> float | None:
        while self._heap:
            t = self._heap[0]
            if self._armed.get((t.run_id, t.key, t.attempt, t.kind)) == t.at:
                return t.at
            heapq.heappop(self._heap)
        return None

    def __len__(self) -> int:
        return len(self._armed)

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
    def __init__(self) -> None:
        self._heap: list[Timer] = []

    def arm(self, timer: Timer) -> None:
        heapq.heappush(self._heap, timer)

    def due(self, now: float, limit: int) -> list[Timer]:
        out = []
        while self._heap and self._heap[0].at <= now and len(out) < limit:
            out.append(heapq.heappop(self._heap))
        return out

    def next_at(self) -> float | None:
        return self._heap[0].at if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)

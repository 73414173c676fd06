"""Which queued attempts go to a pool stream now. Streams stay shallow: an attempt is dispatched
only into a pool's free slots plus a small prefetch, so ordering decisions stay ours (fair
share across tenants builds on this) instead of becoming the stream's FIFO."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ready:
    run_id: str
    partition: int
    tenant: str
    key: str
    attempt: int
    pool: str
    envelope: dict[str, Any]


class Scheduler:
    def __init__(self, capacity: Callable[[str], int], prefetch: float) -> None:
        self._capacity = capacity
        self._prefetch = prefetch
        self._ready: dict[str, deque[Ready]] = {}
        self._inflight: dict[tuple[str, str], str] = {}  # (run, key) -> pool
        self._since: dict[tuple[str, str], float] = {}  # (run, key) -> when it went in flight
        self._busy: dict[str, int] = {}
        self._held: dict[str, int] = {}  # run -> its attempts waiting here or in flight

    def offer(self, item: Ready) -> None:
        self._ready.setdefault(item.pool, deque()).append(item)
        self._hold(item.run_id, +1)

    def _hold(self, run_id: str, n: int) -> None:
        left = self._held.get(run_id, 0) + n
        if left > 0:
            self._held[run_id] = left
        else:
            self._held.pop(run_id, None)

    def backlog(self, pool: str) -> int:
        """Attempts ready for `pool` and waiting for a free slot."""
        return len(self._ready.get(pool, ()))

    def has_work(self, run_id: str) -> bool:
        """Whether the run has attempts waiting for a slot or in flight."""
        return run_id in self._held

    def free(self, pool: str) -> int:
        slots = self._capacity(pool)
        return slots + math.ceil(slots * self._prefetch) - self._busy.get(pool, 0)

    def take(self, still_wanted: Callable[[Ready], bool], now: float = 0.0) -> Iterator[Ready]:
        """Yield the ready attempts to dispatch now, marking them in flight."""
        for pool, queue in self._ready.items():
            free = self.free(pool)
            while queue and free > 0:
                item = queue.popleft()
                self._hold(item.run_id, -1)
                if not still_wanted(item):
                    continue
                self.mark_inflight(item.run_id, item.key, pool, now)
                free -= 1
                yield item

    def mark_inflight(self, run_id: str, key: str, pool: str, since: float = 0.0) -> None:
        if (run_id, key) not in self._inflight:
            self._inflight[(run_id, key)] = pool
            self._since[(run_id, key)] = since
            self._busy[pool] = self._busy.get(pool, 0) + 1
            self._hold(run_id, +1)

    def oldest_inflight(self) -> float | None:
        return min(self._since.values(), default=None)

    def done(self, run_id: str, key: str) -> None:
        self._since.pop((run_id, key), None)
        pool = self._inflight.pop((run_id, key), None)
        if pool is not None:
            self._busy[pool] -= 1
            self._hold(run_id, -1)

    def forget_runs(self, run_ids: set[str]) -> None:
        run_ids = {r for r in run_ids if r in self._held}
        if not run_ids:
            return
        for (run_id, key) in [k for k in self._inflight if k[0] in run_ids]:
            self.done(run_id, key)
        for pool, queue in self._ready.items():
            if any(i.run_id in run_ids for i in queue):
                self._ready[pool] = deque(i for i in queue if i.run_id not in run_ids)
        for run_id in run_ids:
            self._held.pop(run_id, None)

    def inflight(self) -> dict[tuple[str, str], str]:
        return dict(self._inflight)

    def depth(self) -> dict[str, int]:
        return {pool: len(q) for pool, q in self._ready.items()}

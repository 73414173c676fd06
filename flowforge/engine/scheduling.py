"""Which queued attempts go to a pool stream now. Streams stay shallow: an attempt is dispatched
only into a pool's free slots plus a small prefetch, so ordering decisions stay ours (weighted
fair share across tenants, priorities within one) instead of becoming the stream's FIFO."""

from __future__ import annotations

import heapq
import itertools
import math
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
    priority: int = 0  # higher first, within its tenant


def _anyone(tenant: str) -> bool:
    return True


class _Pool:
    """One pool's ready attempts: a queue per tenant (highest priority first, then arrival),
    and each tenant's virtual finish time for weighted fair queueing."""

    def __init__(self) -> None:
        self.queues: dict[str, list[tuple[int, int, Ready]]] = {}  # tenant -> heap of (-priority, seq, item)
        self.passes: dict[str, float] = {}  # tenant -> virtual time of its next dispatch
        self.clock = 0.0  # virtual time of the last dispatch
        self.size = 0

    def push(self, tenant: str, priority: int, seq: int, item: Ready) -> None:
        queue = self.queues.get(tenant)
        if queue is None:  # (re)activated: no credit for the time it was idle
            queue = self.queues[tenant] = []
            self.passes[tenant] = max(self.passes.get(tenant, 0.0), self.clock)
        heapq.heappush(queue, (-priority, seq, item))
        self.size += 1

    def pop(self, allowed: Callable[[str], bool]) -> Ready | None:
        """The next attempt: the head of the tenant furthest behind its share, among those
        `allowed` (under their quota); None when none is."""
        eligible = [t for t in self.queues if allowed(t)]
        if not eligible:
            return None
        tenant = min(eligible, key=lambda t: (self.passes[t], t))
        queue = self.queues[tenant]
        item = heapq.heappop(queue)[2]
        self.size -= 1
        if not queue:
            del self.queues[tenant]
        return item

    def peek(self) -> Ready:
        tenant = min(self.queues, key=lambda t: (self.passes[t], t))
        return self.queues[tenant][0][2]

    def charge(self, tenant: str, weight: float) -> None:
        """Count one dispatch against `tenant`'s share."""
        self.clock = max(self.clock, self.passes.get(tenant, 0.0))
        self.passes[tenant] = self.passes.get(tenant, self.clock) + 1.0 / max(weight, 1e-6)

    def remove(self, drop: Callable[[Ready], bool]) -> None:
        for tenant, queue in list(self.queues.items()):
            kept = [entry for entry in queue if not drop(entry[2])]
            if len(kept) != len(queue):
                self.size -= len(queue) - len(kept)
                if kept:
                    heapq.heapify(kept)
                    self.queues[tenant] = kept
                else:
                    del self.queues[tenant]


class Scheduler:
    """Dispatches ready attempts into free slots only. With `fair`, each pool's free slots go
    to tenants by weighted fair share (a tenant with weight 2 gets twice the dispatches of one
    with weight 1 while both wait), highest priority first within a tenant; no tenant starves,
    and an idle tenant earns no credit to burst with later. Without it: one queue, first come,
    first served."""

    def __init__(self, capacity: Callable[[str], int], prefetch: float, *, fair: bool = True,
                 weight: Callable[[str], float] = lambda tenant: 1.0) -> None:
        self._capacity = capacity
        self._prefetch = prefetch
        self._fair = fair
        self._weight = weight
        self._default_weight = weight
        self._pools: dict[str, _Pool] = {}
        self._seq = itertools.count()
        self._inflight: dict[tuple[str, str], tuple[str, str]] = {}  # (run, key) -> (pool, tenant)
        self._running: dict[str, int] = {}  # tenant -> attempts in flight
        self._max_running: dict[str, int] = {}  # tenant -> quota of attempts in flight
        self._since: dict[tuple[str, str], float] = {}  # (run, key) -> when it went in flight
        self._busy: dict[str, int] = {}
        self._held: dict[str, int] = {}  # run -> its attempts waiting here or in flight

    def offer(self, item: Ready) -> None:
        pool = self._pools.get(item.pool)
        if pool is None:
            pool = self._pools[item.pool] = _Pool()
        if self._fair:
            pool.push(item.tenant, item.priority, next(self._seq), item)
        else:
            pool.push("", 0, next(self._seq), item)
        self._hold(item.run_id, +1)

    def _hold(self, run_id: str, n: int) -> None:
        left = self._held.get(run_id, 0) + n
        if left > 0:
            self._held[run_id] = left
        else:
            self._held.pop(run_id, None)

    def backlog(self, pool: str) -> int:
        """Attempts ready for `pool` and waiting for a free slot."""
        found = self._pools.get(pool)
        return found.size if found else 0

    def has_work(self, run_id: str) -> bool:
        """Whether the run has attempts waiting for a slot or in flight."""
        return run_id in self._held

    def free(self, pool: str) -> int:
        slots = self._capacity(pool)
        return slots + math.ceil(slots * self._prefetch) - self._busy.get(pool, 0)

    def set_weights(self, weights: dict[str, float]) -> None:
        """Tenants' fair-share weights (unlisted: the constructor's `weight`)."""
        default = self._default_weight
        self._weight = lambda tenant: weights.get(tenant) or default(tenant)

    def set_quotas(self, max_running: dict[str, int]) -> None:
        """Tenants' quotas of attempts in flight (all pools); the next dispatch obeys them.
        Attempts already in flight above a lowered quota finish; none starts until below it."""
        self._max_running = dict(max_running)

    def _under_quota(self, tenant: str) -> bool:
        limit = self._max_running.get(tenant)
        return limit is None or self._running.get(tenant, 0) < limit

    def take(self, still_wanted: Callable[[Ready], bool], now: float = 0.0) -> Iterator[Ready]:
        """Yield the ready attempts to dispatch now, marking them in flight."""
        for name, pool in self._pools.items():
            free = self.free(name)
            while pool.size and free > 0:
                if not self._fair and not self._under_quota(pool.peek().tenant):
                    break  # first come, first served: the head waits for its tenant's quota
                item = pool.pop(self._under_quota if self._fair else _anyone)
                if item is None:
                    break  # what waits belongs to tenants at their quota
                self._hold(item.run_id, -1)
                if not still_wanted(item):
                    continue  # a stale attempt: dropped, and not counted against its tenant
                pool.charge(item.tenant if self._fair else "", self._weight(item.tenant))
                self.mark_inflight(item.run_id, item.key, name, now, item.tenant)
                free -= 1
                yield item

    def mark_inflight(self, run_id: str, key: str, pool: str, since: float = 0.0, tenant: str = "") -> None:
        if (run_id, key) not in self._inflight:
            self._inflight[(run_id, key)] = (pool, tenant)
            self._since[(run_id, key)] = since
            self._busy[pool] = self._busy.get(pool, 0) + 1
            self._running[tenant] = self._running.get(tenant, 0) + 1
            self._hold(run_id, +1)

    def oldest_inflight(self) -> float | None:
        return min(self._since.values(), default=None)

    def done(self, run_id: str, key: str) -> None:
        self._since.pop((run_id, key), None)
        found = self._inflight.pop((run_id, key), None)
        if found is not None:
            pool, tenant = found
            self._busy[pool] -= 1
            self._running[tenant] -= 1
            self._hold(run_id, -1)

    def forget_runs(self, run_ids: set[str]) -> None:
        run_ids = {r for r in run_ids if r in self._held}
        if not run_ids:
            return
        for (run_id, key) in [k for k in self._inflight if k[0] in run_ids]:
            self.done(run_id, key)
        for pool in self._pools.values():
            pool.remove(lambda item: item.run_id in run_ids)
        for run_id in run_ids:
            self._held.pop(run_id, None)

    def inflight(self) -> dict[tuple[str, str], str]:
        """(run, task key) -> pool, of every attempt in flight."""
        return {k: pool for k, (pool, _tenant) in self._inflight.items()}

    def depth(self) -> dict[str, int]:
        return {name: pool.size for name, pool in self._pools.items()}

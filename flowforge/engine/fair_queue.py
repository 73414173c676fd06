"""One pool's queue of ready attempts, for weighted fair share across tenants: per tenant, a
lane per project (highest priority first, then arrival), and each tenant's virtual time.
Pure; the scheduler decides what a tenant's share is and which heads fit their quotas."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowforge.engine.scheduling import Ready


def anyone(item: Ready) -> bool:
    return True


# (-priority, arrival, item): a heap orders by the first two. Arrival is (the run's, the
# attempt's): a run's attempts keep their place however late its fan-out makes them.
Entry = tuple[int, tuple[int, int], "Ready"]


class FairQueue:
    """One pool's ready attempts: per tenant, a queue per project (highest priority first, then
    arrival), and each tenant's virtual finish time for weighted fair queueing. A project's queue
    is a lane: its head waits for its quotas, and what queues behind it waits with it."""

    def __init__(self) -> None:
        self.queues: dict[str, dict[str, list[Entry]]] = {}  # tenant -> project -> heap
        self.passes: dict[str, float] = {}  # tenant -> virtual time of its next dispatch
        self.clock = 0.0  # virtual time of the last dispatch
        self.size = 0

    def push(self, tenant: str, priority: int, seq: tuple[int, int], item: Ready, project: str = "") -> None:
        lanes = self.queues.get(tenant)
        if lanes is None:  # (re)activated: no credit for the time it was idle
            lanes = self.queues[tenant] = {}
            self.passes[tenant] = max(self.passes.get(tenant, 0.0), self.clock)
        queue = lanes.get(project)
        if queue is None:
            queue = lanes[project] = []
        heapq.heappush(queue, (-priority, seq, item))
        self.size += 1

    def pop(self, allowed: Callable[[Ready], bool], share: Callable[[str], float]) -> Entry | None:
        """The next attempt: the head of the tenant holding the smallest weighted share of the
        pool's slots (`share`), then the one furthest behind in dispatches, among those with a
        lane whose head is `allowed` (within its quotas); None when none is. O(lanes)."""
        check = None if allowed is anyone else allowed
        passes = self.passes
        best_rank: tuple[float, float, str] | None = None
        best = ("", "")
        for tenant, lanes in self.queues.items():
            if len(lanes) == 1:  # the common case: one project's attempts in this pool
                lane = next(iter(lanes))
                if check is not None and not check(lanes[lane][0][2]):
                    continue
            else:
                head: Entry | None = None
                for project, queue in lanes.items():
                    entry = queue[0]  # (-priority, arrival, item): arrival is unique
                    if (head is None or entry < head) and (check is None or check(entry[2])):
                        head, lane = entry, project
                if head is None:
                    continue
            rank = (share(tenant), passes[tenant], tenant)
            if best_rank is None or rank < best_rank:
                best_rank, best = rank, (tenant, lane)
        if best_rank is None:
            return None
        tenant, lane = best
        lanes = self.queues[tenant]
        queue = lanes[lane]
        entry = heapq.heappop(queue)
        self.size -= 1
        if not queue:
            del lanes[lane]
            if not lanes:
                del self.queues[tenant]
        return entry

    def waiting(self, tenant: str) -> int:
        return sum(len(queue) for queue in self.queues.get(tenant, {}).values())

    def peek(self) -> Ready:
        tenant = min(self.queues, key=lambda t: (self.passes[t], t))
        return min(q[0] for q in self.queues[tenant].values())[2]

    def heads(self) -> Iterator[Ready]:
        """The head of every lane."""
        for lanes in self.queues.values():
            for queue in lanes.values():
                yield queue[0][2]

    def charge(self, tenant: str, weight: float) -> None:
        """Count one dispatch against `tenant`'s share."""
        self.clock = max(self.clock, self.passes.get(tenant, 0.0))
        self.passes[tenant] = self.passes.get(tenant, self.clock) + 1.0 / max(weight, 1e-6)

    def uncharge(self, tenant: str, weight: float) -> None:
        """Take back the last dispatch counted against `tenant` (it did not go after all)."""
        if tenant in self.passes:
            self.passes[tenant] -= 1.0 / max(weight, 1e-6)

    def remove(self, drop: Callable[[Ready], bool]) -> None:
        for tenant, lanes in list(self.queues.items()):
            for project, queue in list(lanes.items()):
                kept = [entry for entry in queue if not drop(entry[2])]
                if len(kept) != len(queue):
                    self.size -= len(queue) - len(kept)
                    if kept:
                        heapq.heapify(kept)
                        lanes[project] = kept
                    else:
                        del lanes[project]
            if not lanes:
                del self.queues[tenant]

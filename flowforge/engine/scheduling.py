"""Which queued attempts go to a pool stream now. Streams stay shallow: an attempt is dispatched
only into a pool's free slots plus a small prefetch, so ordering decisions stay ours (weighted
fair share across tenants, priorities within one) instead of becoming the stream's FIFO."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flowforge.engine import board, fair_queue
from flowforge.engine.limits import NO_COST, Cost, Quota, wait_reason


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
    project: str = "default"
    cost: Cost = NO_COST
    again: bool = False  # dispatched before, then taken back from its stream unread


_IDLE = (0, 0, 0, 0)  # the usage of a scope with nothing in flight


class Scheduler:
    """Dispatches ready attempts into free slots only. With `fair`, each pool's slots are
    shared by weight: a free slot goes to the waiting tenant that holds the fewest of the pool's
    slots per unit of weight (so, while both wait, a tenant with weight 2 holds twice the slots
    of one with weight 1, however long their tasks run), ties to the one furthest behind in
    dispatches; highest priority first within a tenant. A tenant that arrives while another
    holds every slot gets each slot that frees until it holds its share; none starves, and an
    idle tenant earns no credit to burst with later. Such a newcomer also need not wait behind
    the others' prefetched entries: `revocable` names those worth taking back from the stream,
    and `revoked` queues again the ones no agent had read. Without `fair`: one queue, first
    come, first served.

    Quotas: an attempt is dispatched only if it fits every limit of its tenant and of its
    project (attempts in flight, and the summed CPU, memory and GPU of their costs). Each
    project's attempts queue in a lane of their own, in priority order; a lane whose head does
    not fit waits whole (what is behind it does not overtake it, so a large request is not
    starved by a stream of small ones), while other lanes and tenants go on. A pop looks at
    each lane's head only: O(lanes), never O(queue). `quota_waits` says which lanes wait for
    which limit.

    With several coordinators, what the others have in flight (`set_elsewhere`, from the
    board) counts too: against the pool's slots, the tenants' shares and the quotas."""

    def __init__(self, capacity: Callable[[str], int], prefetch: float, *, fair: bool = True,
                 weight: Callable[[str], float] = lambda tenant: 1.0) -> None:
        self._capacity = capacity
        self._prefetch = prefetch
        self._fair = fair
        self._weight = weight
        self._default_weight = weight
        self._pools: dict[str, fair_queue.FairQueue] = {}
        self._seq = itertools.count()
        # (run, key) -> (pool, tenant, project, cost)
        self._inflight: dict[tuple[str, str], tuple[str, str, str, Cost]] = {}
        # Scope -> [attempts, millicores, bytes, thousandths of a GPU] in flight, and its quota.
        # A scope is (tenant, None) for the whole tenant, (tenant, project) for one project.
        self._usage: dict[tuple[str, str | None], list[int]] = {}
        self._limits: dict[tuple[str, str | None], Quota] = {}
        self._since: dict[tuple[str, str], float] = {}  # (run, key) -> when it went in flight
        self._busy: dict[str, int] = {}  # pool -> attempts in flight
        self._holding: dict[tuple[str, str], int] = {}  # (pool, tenant) -> attempts in flight
        self._held: dict[str, int] = {}  # run -> its attempts waiting here or in flight
        self._arrived: dict[str, int] = {}  # run -> when its first waiting attempt arrived (a seq)
        self._waiting: dict[tuple[str, str], int] = {}  # (run, pool) -> its attempts waiting here
        # Attempts this scheduler dispatched whose stream entry no agent may have read yet:
        # (run, key) -> (queue entry, entry id); `revocable` may want them back.
        self._placed: dict[tuple[str, str], tuple[fair_queue.Entry, bytes | None]] = {}
        self._elsewhere = board.EMPTY  # what other coordinators have in flight

    def offer(self, item: Ready) -> None:
        pool = self._pools.get(item.pool)
        if pool is None:
            pool = self._pools[item.pool] = fair_queue.FairQueue()
        # Attempts queue in the order their runs arrived, then their own: the instances a
        # fan-out makes a chunk at a time queue ahead of a run that came after it.
        seq = next(self._seq)
        arrival = (self._arrived.setdefault(item.run_id, seq), seq)
        if self._fair:
            pool.push(item.tenant, item.priority, arrival, item, item.project)
        else:
            pool.push("", 0, arrival, item)
        self._hold(item.run_id, +1)
        self._wait(item.run_id, item.pool, +1)

    def _wait(self, run_id: str, pool: str, n: int) -> None:
        left = self._waiting.get((run_id, pool), 0) + n
        if left > 0:
            self._waiting[(run_id, pool)] = left
        else:
            self._waiting.pop((run_id, pool), None)

    def waiting(self, run_id: str, pool: str) -> int:
        """The run's attempts waiting here for a slot of `pool` (not those in flight)."""
        return self._waiting.get((run_id, pool), 0)

    def _hold(self, run_id: str, n: int) -> None:
        left = self._held.get(run_id, 0) + n
        if left > 0:
            self._held[run_id] = left
        else:
            self._held.pop(run_id, None)
            self._arrived.pop(run_id, None)

    def backlog(self, pool: str) -> int:
        """Attempts ready for `pool` and waiting for a free slot."""
        found = self._pools.get(pool)
        return found.size if found else 0

    def backlog_everywhere(self, pool: str) -> int:
        """Attempts waiting for a slot of `pool` here and on the other coordinators (as of the
        last exchange): what the pool manager sizes the pool for."""
        return self.backlog(pool) + self._elsewhere.queued.get(pool, 0)

    def has_work(self, run_id: str) -> bool:
        """Whether the run has attempts waiting for a slot or in flight."""
        return run_id in self._held

    def inflight_count(self) -> int:
        """Attempts in flight, all pools."""
        return len(self._inflight)

    def queued(self) -> int:
        """Attempts waiting for a slot, all pools."""
        return sum(pool.size for pool in self._pools.values())

    def budget(self, pool: str) -> int:
        """Attempts the pool may have in flight: its slots plus the prefetch."""
        slots = self._capacity(pool)
        return slots + math.ceil(slots * self._prefetch)

    def free(self, pool: str) -> int:
        return self.budget(pool) - self._busy.get(pool, 0) - self._elsewhere.busy.get(pool, 0)

    # ---- the other coordinators --------------------------------------------------------------

    def set_elsewhere(self, view: board.View) -> None:
        """What the other coordinators have in flight (their snapshots on the board, summed)."""
        self._elsewhere = view

    @property
    def elsewhere(self) -> board.View:
        return self._elsewhere

    def snapshot(self) -> board.View:
        """What this scheduler has in flight, for the board."""
        return board.View({pool: n for pool, n in self._busy.items() if n}, dict(self._holding),
                          {scope: (u[0], u[1], u[2], u[3]) for scope, u in self._usage.items()},
                          {name: pool.size for name, pool in self._pools.items() if pool.size})

    def wanted(self, pools: Iterable[str] = ()) -> list[str]:
        """The board items this scheduler needs from the other coordinators: the counts of
        `pools` and of every pool it has work for, and the holdings and quota usage of the
        tenants and projects it has work for (what its next `take` looks at). O(lanes)."""
        out = set()
        for name in [*pools, *self._pools, *self._busy]:
            out.add(board.busy_item(name))
            out.add(board.queued_item(name))
        for name, pool in self._pools.items():
            if self._fair:
                out.update(board.holding_item(name, tenant) for tenant in pool.queues)
            if self._limits:
                for head in pool.heads():
                    for scope in ((head.tenant, None), (head.tenant, head.project)):
                        if scope in self._limits:
                            out.add(board.usage_item(scope))
        out.update(board.holding_item(name, tenant) for name, tenant in self._holding)
        return sorted(out)

    def claim(self, items: Iterable[Ready], *, pools: bool = False) -> board.Claim:
        """What the board must check before `items` (just taken) may go: the limits of their
        scopes that they add to; with `pools`, the budgets of their pools too."""
        if not self._limits and not pools:
            return board.Claim()
        items = list(items)
        added = [(scope, (1, item.cost.cpu, item.cost.memory, item.cost.gpu))
                 for item in items for scope in ((item.tenant, None), (item.tenant, item.project))]
        budgets = {i.pool: self.budget(i.pool) for i in items} if pools else None
        return board.claim(added, {scope: q.amounts() for scope, q in self._limits.items()}, budgets)

    def untake(self, items: Iterable[Ready]) -> None:
        """Put attempts `take` yielded back in their places in the queue, as if never taken
        (the board refused their claim: another coordinator spent the room first)."""
        for item in reversed(list(items)):  # (the last taken first: dispatches are uncharged in turn)
            found = self._placed.get((item.run_id, item.key))
            self._hold(item.run_id, +1)  # (first: the run keeps its arrival)
            self.done(item.run_id, item.key)
            seq = found[0][1] if found is not None else (self._arrived.setdefault(item.run_id, next(self._seq)),
                                                          next(self._seq))
            pool = self._pools[item.pool]
            if self._fair:
                pool.uncharge(item.tenant, self._weight(item.tenant))
                pool.push(item.tenant, item.priority, seq, item, item.project)
            else:
                pool.push("", 0, seq, item)
            self._wait(item.run_id, item.pool, +1)

    def set_weights(self, weights: dict[str, float]) -> None:
        """Tenants' fair-share weights (unlisted: the constructor's `weight`)."""
        default = self._default_weight
        self._weight = lambda tenant: weights.get(tenant) or default(tenant)

    def set_quotas(self, max_running: dict[str, int]) -> None:
        """Tenants' quotas of attempts in flight (all pools), and no other limit."""
        self.set_limits({t: Quota(max_running_tasks=n) for t, n in max_running.items()})

    def set_limits(self, tenants: Mapping[str, Quota],
                   projects: Mapping[tuple[str, str], Quota] | None = None) -> None:
        """Every tenant's quotas, and the projects' that narrow them (all pools); the next
        dispatch obeys them. Attempts already in flight above a lowered limit finish; none
        starts until it fits."""
        limits: dict[tuple[str, str | None], Quota] = {(t, None): q for t, q in tenants.items() if q}
        limits.update({(t, p): q for (t, p), q in (projects or {}).items() if q})
        self._limits = limits

    def _blocker(self, item: Ready) -> tuple[tuple[str, str | None], str, int, int, int] | None:
        """The first limit `item` would exceed, as (scope, limit name, limit, in use, needed)
        in the limit's unit, or None when it fits them all."""
        if not self._limits:
            return None
        for scope in ((item.tenant, None), (item.tenant, item.project)):
            q = self._limits.get(scope)
            if q is None:
                continue
            used = self._used(scope)
            c = item.cost
            if q.max_running_tasks is not None and used[0] >= q.max_running_tasks:
                return scope, "max_running_tasks", q.max_running_tasks, used[0], 1
            if q.max_cpu is not None and c.cpu and used[1] + c.cpu > q.max_cpu:
                return scope, "max_cpu", q.max_cpu, used[1], c.cpu
            if q.max_memory is not None and c.memory and used[2] + c.memory > q.max_memory:
                return scope, "max_memory", q.max_memory, used[2], c.memory
            if q.max_gpu is not None and c.gpu and used[3] + c.gpu > q.max_gpu * 1000:
                return scope, "max_gpu", q.max_gpu * 1000, used[3], c.gpu
        return None

    def _used(self, scope: tuple[str, str | None]) -> tuple[int, int, int, int]:
        """In flight in `scope`, here and on the other coordinators."""
        mine = self._usage.get(scope) or _IDLE
        other = self._elsewhere.usage.get(scope)
        if other is None:
            return mine[0], mine[1], mine[2], mine[3]
        return mine[0] + other[0], mine[1] + other[1], mine[2] + other[2], mine[3] + other[3]

    def _fits(self, item: Ready) -> bool:
        return self._blocker(item) is None

    def quota_waits(self) -> dict[tuple[str, str, str], str]:
        """(pool, tenant, project) -> why that lane waits, for each lane whose head does not
        fit a quota: everything queued in the lane waits for that limit (e.g. "quota: tenant
        acme max_gpu 2 (2 in use)"). O(lanes)."""
        out: dict[tuple[str, str, str], str] = {}
        if not self._limits:
            return out
        for name, pool in self._pools.items():
            for item in pool.heads():
                found = self._blocker(item)
                if found is not None:
                    out[(name, item.tenant, item.project)] = wait_reason(*found)
        return out

    def usage(self, tenant: str, project: str | None = None) -> Cost:
        """What a tenant (or one of its projects) has in flight through this scheduler, as a
        summed cost."""
        used = self._usage.get((tenant, project)) or _IDLE
        return Cost(used[1], used[2], used[3])

    def running(self, tenant: str, project: str | None = None) -> int:
        """Attempts a tenant (or one of its projects) has in flight through this scheduler."""
        return (self._usage.get((tenant, project)) or _IDLE)[0]

    def _count(self, tenant: str, project: str, cost: Cost, sign: int) -> None:
        for scope in ((tenant, None), (tenant, project)):
            used = self._usage.get(scope)
            if used is None:
                used = self._usage[scope] = [0, 0, 0, 0]
            used[0] += sign
            used[1] += sign * cost.cpu
            used[2] += sign * cost.memory
            used[3] += sign * cost.gpu
            if used[0] <= 0:
                del self._usage[scope]

    def _share(self, pool: str) -> Callable[[str], float]:
        """A tenant's weighted share of `pool`'s slots: its attempts in flight there / weight."""
        if not self._fair:
            return lambda tenant: 0.0
        holding, weight, other = self._holding, self._weight, self._elsewhere.holding
        if other:
            return lambda tenant: ((holding.get((pool, tenant), 0) + other.get((pool, tenant), 0))
                                   / max(weight(tenant), 1e-6))
        return lambda tenant: holding.get((pool, tenant), 0) / max(weight(tenant), 1e-6)

    def take(self, still_wanted: Callable[[Ready], bool], now: float = 0.0) -> Iterator[Ready]:
        """Yield the ready attempts to dispatch now, marking them in flight."""
        for name, pool in self._pools.items():
            free = self.free(name)
            while pool.size and free > 0:
                if not self._fair and not self._fits(pool.peek()):
                    break  # first come, first served: the head waits for its quotas
                entry = pool.pop(self._fits if self._fair and self._limits else fair_queue.anyone, self._share(name))
                if entry is None:
                    break  # what waits belongs to tenants at their quota
                item = entry[2]
                self._wait(item.run_id, name, -1)
                if not still_wanted(item):
                    self._hold(item.run_id, -1)
                    continue  # a stale attempt: dropped, and not counted against its tenant
                pool.charge(item.tenant if self._fair else "", self._weight(item.tenant))
                self.mark_inflight(item.run_id, item.key, name, now, item.tenant,
                                   project=item.project, cost=item.cost)
                self._hold(item.run_id, -1)  # (after: a run in flight keeps its arrival)
                self._placed[(item.run_id, item.key)] = (entry, None)
                free -= 1
                yield item

    # ---- taking back prefetched entries ----------------------------------------------------

    def placed(self, item: Ready, entry_id: bytes) -> None:
        """`item` (yielded by `take`) now sits in its pool stream as entry `entry_id`."""
        found = self._placed.get((item.run_id, item.key))
        if found is not None:
            self._placed[(item.run_id, item.key)] = (found[0], entry_id)

    def revocable(self) -> dict[tuple[int, str], list[bytes]]:
        """Dispatch entries to take back, by (partition, pool): when a tenant waits in a pool
        while holding less than its weighted share of the pool's in-flight budget (slots plus
        prefetch) and that budget is spent, every entry of the tenants holding more than their
        share. Only entries no agent has read yet can actually be taken back (`revoked` learns
        which); the next `take` dispatches them again in fair order, after the waiting
        tenant's. Without this, a tenant arriving while another's attempts fill the pool would
        queue in the stream behind every attempt prefetched for the other."""
        out: dict[tuple[int, str], list[bytes]] = {}
        if not self._fair or not self._placed:
            return out
        for name, pool in self._pools.items():
            if not pool.size:
                continue
            free = self.free(name)
            held = {t: n for (p, t), n in self._holding.items() if p == name}
            for (p, t), n in self._elsewhere.holding.items():
                if p == name:
                    held[t] = held.get(t, 0) + n
            active = set(held) | set(pool.queues)
            if len(active) < 2:
                continue
            budget = free + self._busy.get(name, 0) + self._elsewhere.busy.get(name, 0)
            total = sum(max(self._weight(t), 1e-6) for t in active)
            fair = {t: budget * max(self._weight(t), 1e-6) / total for t in active}
            want = 0
            for tenant in pool.queues:
                short = math.ceil(fair[tenant]) - held.get(tenant, 0)
                if short > 0 and any(self._fits(head) for head in self._heads(pool, tenant)):
                    want += min(short, pool.waiting(tenant))
            if want <= max(free, 0):
                continue
            over = {t for t, n in held.items() if n > fair[t]}
            for entry, entry_id in self._placed.values():
                item = entry[2]
                if entry_id is not None and item.pool == name and item.tenant in over:
                    out.setdefault((item.partition, name), []).append(entry_id)
        return out

    @staticmethod
    def _heads(pool: fair_queue.FairQueue, tenant: str) -> Iterator[Ready]:
        for queue in pool.queues.get(tenant, {}).values():
            yield queue[0][2]

    def revoked(self, partition: int, pool: str, asked: list[bytes], taken: list[bytes]) -> int:
        """The outcome of taking back the entries `asked` from one pool stream (as `revocable`
        listed them): those `taken` queue again in their place (their arrival order kept); the
        rest were read by an agent and stay in flight, no longer revocable. Returns how many
        queue again. (Entry ids are unique within a stream only.) First come, first served takes
        nothing back."""
        if not asked or not self._fair:
            return 0
        asked_set, taken_set = set(asked), set(taken)
        back = 0
        for ident, (entry, entry_id) in list(self._placed.items()):
            if entry_id not in asked_set or entry[2].partition != partition or entry[2].pool != pool:
                continue
            if entry_id not in taken_set:
                del self._placed[ident]  # an agent has it
                continue
            item = entry[2]
            self._hold(item.run_id, +1)  # (first: the run keeps its arrival for what it makes next)
            self.done(item.run_id, item.key)
            again = item if item.again else dataclasses.replace(item, again=True)
            self._pools[item.pool].push(item.tenant, item.priority, entry[1], again, item.project)
            self._wait(item.run_id, item.pool, +1)
            back += 1
        return back

    def mark_inflight(self, run_id: str, key: str, pool: str, since: float = 0.0, tenant: str = "", *,
                      project: str = "default", cost: Cost = NO_COST) -> None:
        if (run_id, key) not in self._inflight:
            self._inflight[(run_id, key)] = (pool, tenant, project, cost)
            self._since[(run_id, key)] = since
            self._busy[pool] = self._busy.get(pool, 0) + 1
            self._holding[(pool, tenant)] = self._holding.get((pool, tenant), 0) + 1
            self._count(tenant, project, cost, +1)
            self._hold(run_id, +1)

    def oldest_inflight(self) -> float | None:
        return min(self._since.values(), default=None)

    def since(self, run_id: str, key: str) -> float | None:
        """When the task's attempt in flight was dispatched (None: not in flight)."""
        return self._since.get((run_id, key))

    def done(self, run_id: str, key: str) -> None:
        self._since.pop((run_id, key), None)
        self._placed.pop((run_id, key), None)
        found = self._inflight.pop((run_id, key), None)
        if found is not None:
            pool, tenant, project, cost = found
            self._busy[pool] -= 1
            if self._holding[(pool, tenant)] > 1:
                self._holding[(pool, tenant)] -= 1
            else:
                del self._holding[(pool, tenant)]
            self._count(tenant, project, cost, -1)
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
            self._arrived.pop(run_id, None)
        for k in [k for k in self._waiting if k[0] in run_ids]:
            del self._waiting[k]

    def inflight(self) -> dict[tuple[str, str], str]:
        """(run, task key) -> pool, of every attempt in flight."""
        return {k: v[0] for k, v in self._inflight.items()}

    def depth(self) -> dict[str, int]:
        return {name: pool.size for name, pool in self._pools.items()}

"""The reconciler: a slow sweep that repairs whatever Redis lost, from Postgres.

Postgres is the truth; Redis may lose writes (a flush, a failover). Each sweep:
1. publishes outbox events whose fast-path publish never happened, and deletes old published ones;
2. adopts active runs of our partitions that the coordinator does not hold (a lost
   `run_created`, a coordinator restart) and settles them;
3. dispatches again attempts that are in flight in Postgres but absent from their pool stream
   for longer than `redispatch_after`, once every event that could hold their result has been
   handled (at-least-once: a duplicate result changes nothing);
4. trims streams down to their unacknowledged entries.
When Redis's epoch token vanished (its data is gone), step 3 runs at once for everything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from flowforge import errors, wire
from flowforge.domain import machine, model
from flowforge.domain.states import TASK_ACTIVE
from flowforge.engine import coordinator as coordinating, envelopes

log = structlog.get_logger("flowforge.reconciler")


@dataclass(frozen=True)
class Options:
    interval_s: float = 10.0
    redispatch_after_s: float = 15.0
    outbox_age_s: float = 2.0  # relay events the fast path has not published after this
    outbox_keep_s: float = 3600.0  # delete published events after this


class Reconciler:
    def __init__(self, coord: coordinating.Coordinator, pools: Sequence[str], options: Options) -> None:
        self.coord = coord
        self.pools = list(pools)
        self.options = options
        # attempt -> (when first missed from its pool stream, the event stream's position then)
        self._missing_since: dict[tuple[str, str, int], tuple[float, bytes]] = {}
        self.sweeps = 0

    async def run_forever(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.sweep()
            except errors.TemporaryError as exc:
                log.warning("reconciler.backend_unavailable", error=str(exc))
            except Exception:
                log.exception("reconciler.sweep_failed")
            try:
                await asyncio.wait_for(stopping.wait(), timeout=self.options.interval_s)
            except TimeoutError:
                pass

    async def sweep(self) -> None:
        c = self.coord
        parts = c.options.partitions
        kept = await c.queue.check_epoch()
        if not kept:
            log.warning("reconciler.redis_lost_data", action="rebuilding streams from postgres")
            await c.queue.ensure_groups(parts, self.pools)
        await self._relay_outbox()
        await c.store.purge_outbox(parts, self.options.outbox_keep_s)
        await self._adopt_orphans(parts)
        for p in parts:
            await c.queue.trim(p, self.pools)
        await self._redispatch_lost(parts, immediately=not kept)
        self.sweeps += 1

    async def _relay_outbox(self) -> None:
        c = self.coord
        mine = await c.store.unpublished(c.options.partitions, self.options.outbox_age_s, 1000)
        if mine:
            await c.queue.publish_events([(e.partition, e.payload) for e in mine])
            await c.store.mark_published([e.id for e in mine])
            log.info("reconciler.outbox_relayed", events=len(mine))

    async def _adopt_orphans(self, parts: Sequence[int]) -> None:
        c = self.coord
        active = await c.store.active_runs(parts)
        orphans = [r for r in active if r not in c.runs]
        if not orphans:
            return
        log.info("reconciler.adopting_runs", runs=len(orphans))
        for i in range(0, len(orphans), 100):
            # Settling is idempotent: a Start event moves only what can move. The coordinator
            # loads the runs it does not hold.
            await c.handle_events([(run_id, machine.Start()) for run_id in orphans[i : i + 100]])

    async def _redispatch_lost(self, parts: Sequence[int], *, immediately: bool) -> None:
        async with self.coord.lock:
            await self._redispatch_locked(parts, immediately=immediately)

    async def _redispatch_locked(self, parts: Sequence[int], *, immediately: bool) -> None:
        """An attempt in flight whose entry is gone from its pool stream either finished (its
        result waits in the event stream) or was lost with Redis's data. It counts as lost only
        once the coordinator has handled every event that existed when the entry was first
        missed, and the attempt is still in flight: a slow coordinator causes no duplicates."""
        c = self.coord
        now = c.clock.now()
        oldest = c.scheduler.oldest_inflight()
        if oldest is None or (not immediately and now - oldest < self.options.redispatch_after_s):
            self._missing_since.clear()
            return  # nothing has been in flight long enough to be suspect
        present: set[tuple[str, str, int]] = set()
        for p in parts:
            for pool in self.pools:
                present |= await c.queue.attempts_in_stream(p, pool)
        positions: dict[int, bytes] = {}  # read after the scan: later than any result of a missing entry
        handled: dict[int, bool] = {}
        lost: list[tuple[int, str, bytes]] = []
        still_missing: dict[tuple[str, str, int], tuple[float, bytes]] = {}
        for (run_id, key), pool in c.scheduler.inflight().items():
            entry = c.runs.get(run_id)
            if entry is None:
                continue
            run, partition = entry
            task = run.tasks.get(key)
            if task is None or task.status not in TASK_ACTIVE:
                continue
            ident = (run_id, key, task.attempt)
            if ident in present:
                continue
            seen = self._missing_since.get(ident)
            if seen is None:
                if partition not in positions:
                    positions[partition] = await c.queue.events_position(partition)
                seen = (now, positions[partition])
            first, position = seen
            if not immediately:
                if now - first < self.options.redispatch_after_s:
                    still_missing[ident] = seen
                    continue
                if partition not in handled:
                    handled[partition] = await c.queue.events_handled_through(partition, position)
                if not handled[partition]:
                    still_missing[ident] = seen  # its result may be among the unhandled events
                    continue
            lost.append((partition, pool, _envelope(run, partition, task, now)))
        self._missing_since = still_missing
        if lost:
            log.warning("reconciler.redispatching", attempts=len(lost))
            await c.queue.dispatch(lost)


def _envelope(run: model.Run, partition: int, task: model.Task, now: float) -> bytes:
    tspec = run.dag.tasks[task.name]
    args = model.resolve_args(run, task)
    fx = machine.Enqueue(task, run.dispatch_pool(task.name), tspec.fn, args, tspec.timeout_seconds)
    ready = envelopes.ready_item(run, partition, task, fx, now)
    return wire.pack(wire.DISPATCH, **dict(ready.envelope, dispatched_at=now))

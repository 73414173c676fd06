"""The coordinator's side of quotas: the scheduler's limits and weights kept as Postgres has
them, what an attempt in flight costs, and which lanes wait for which limit (for the API)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import structlog

from flowforge import errors, keys, ports
from flowforge.domain import model, routing
from flowforge.domain.model import Run
from flowforge.engine import envelopes, limits, scheduling

log = structlog.get_logger("flowforge.coordinator")
WAITS_EVERY_S = 0.5  # how often the quota wait reasons are recomputed (and published if changed)
WAITS_TTL_S = 10.0  # published reasons expire unless refreshed (a coordinator that died)


class QuotaFeed:
    def __init__(self, scheduler: scheduling.Scheduler, store: ports.RunStore, queue: ports.WorkQueue,
                 partitions: Sequence[int], shapes: Mapping[str, routing.SlotShape] | None = None) -> None:
        self.scheduler = scheduler
        self.store = store
        self.queue = queue
        self.partitions = partitions
        # What a light attempt of each pool counts against quotas: its slot's share of an agent.
        self._slot_costs = {pool: limits.slot_cost(shape) for pool, shape in (shapes or {}).items()}
        self._waits: dict[str, str] = {}  # the quota wait reasons last published
        self._waits_checked = 0.0
        self._waits_published = 0.0

    def cost_of(self, run: Run, name: str, pool: str) -> limits.Cost:
        """What an attempt of task `name` counts against quotas while in flight: a heavy one its
        Pod's requests, a light one its slot's share of the pool's agent."""
        if pool == model.HEAVY_POOL:
            return envelopes.request_cost(run.dag.tasks[name].resources)
        return self._slot_costs.get(pool, limits.NO_COST)

    async def refresh(self) -> None:
        """Take the quotas (tenants' and projects') and weights Postgres has now."""
        read = getattr(self.store, "tenant_limits", None)
        if read is None:
            return
        found = await read()
        if isinstance(found, ports.Quotas):
            self.scheduler.set_limits(
                {t: limits.Quota(**q) for t, q in found.tenants.items()},
                {k: limits.Quota(**q) for k, q in found.projects.items()},
            )
            self.scheduler.set_weights(found.weights)
        else:  # (quotas of attempts in flight, weights)
            self.scheduler.set_quotas(found[0])
            self.scheduler.set_weights(found[1])

    async def follow(self, stopping: asyncio.Event, every_s: float = 1.0) -> None:
        """Keep the scheduler's quotas and weights as Postgres has them."""
        if getattr(self.store, "tenant_limits", None) is None:
            return
        while not stopping.is_set():
            try:
                await self.refresh()
            except errors.TemporaryError as exc:
                log.warning("coordinator.tenant_limits_unavailable", error=str(exc))
            try:
                await asyncio.wait_for(stopping.wait(), timeout=every_s)
            except TimeoutError:
                pass

    async def publish_waits(self) -> None:
        """Tell the API which queued attempts wait for a quota, and which limit.

        Why this way: a held attempt's row is not written at all. Every WAITS_EVERY_S the
        scheduler names the lanes (pool, tenant, project) whose head does not fit a quota, and
        so wait whole: O(lanes), never O(tasks). That small map goes to Redis, in one hash per
        partition this coordinator serves, only when it changed (or to refresh its TTL, so a
        dead coordinator's reasons expire). The API attaches the reason to the tasks of a run
        that are queued, not yet dispatched, in such a lane. Writing a reason on each held
        task's row instead would cost a Postgres write per task when it becomes held and again
        when it stops being held, for tasks that may number in the hundreds of thousands."""
        publish = getattr(self.queue, "publish_waits", None)
        now = time.monotonic()
        if publish is None or now - self._waits_checked < WAITS_EVERY_S:
            return
        self._waits_checked = now
        waits = {keys.quota_wait_field(*lane): why for lane, why in self.scheduler.quota_waits().items()}
        if waits == self._waits and (not waits or now - self._waits_published < WAITS_TTL_S / 3):
            return
        try:
            await publish(self.partitions, waits, WAITS_TTL_S)
        except Exception as exc:  # best effort: never a reason to stop dispatching
            log.warning("coordinator.waits_unpublished", error=repr(exc))
            return
        self._waits, self._waits_published = waits, now

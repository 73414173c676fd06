"""The retention worker: every period, delete the lines older than `days`, a bounded batch per
call, until none is left. For a store whose database expires lines itself (ClickHouse's TTL),
the first call deletes nothing and the period ends there."""

from __future__ import annotations

import asyncio
import logging

from flowforge import errors, ports
from flowforge.logs import model

log = logging.getLogger(__name__)
DAY_S = 86_400.0


class RetentionWorker:
    def __init__(self, store: model.LogStore, *, days: int, clock: ports.Clock, every_s: float = 600.0,
                 batch: int = 10_000, max_batches: int = 10_000) -> None:
        if days < 1 or batch < 1 or every_s <= 0:
            raise ValueError(f"retention needs days >= 1, batch >= 1 and every_s > 0 (got {days}, {batch}, {every_s})")
        self.store = store
        self.days = days
        self.clock = clock
        self.every_s = every_s
        self.batch = batch
        self.max_batches = max_batches  # a bound on one period's work; the next period goes on
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """One period's purge: lines written before now - days; how many went."""
        cutoff = self.clock.now() - self.days * DAY_S
        total = 0
        for _ in range(self.max_batches):
            gone = await self.store.purge(cutoff, self.batch)
            total += gone
            if gone == 0:
                break
        return total

    async def run_forever(self) -> None:
        while True:
            try:
                gone = await self.run_once()
                if gone:
                    log.info("log retention: %d lines older than %d days deleted", gone, self.days)
            except errors.TemporaryError as exc:
                log.warning("log retention: %s; trying again next period", exc)
            except Exception:  # a worker that dies keeps lines forever: log, and try next period
                log.exception("log retention failed; trying again next period")
            await asyncio.sleep(self.every_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run_forever(), name="log retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

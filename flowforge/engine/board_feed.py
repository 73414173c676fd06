"""The coordinator's side of the board (`board`): exchange counts with the other coordinators
every `board.EVERY_S`, and claim a cycle's attempts that count against a limit before they go."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import structlog

from flowforge import ports
from flowforge.engine import board, scheduling

log = structlog.get_logger("flowforge.coordinator")
CLAIM_TRIES = 3


class BoardFeed:
    def __init__(self, scheduler: scheduling.Scheduler, queue: ports.WorkQueue, partitions: Sequence[int],
                 pools: Sequence[str] = (), metrics: ports.Metrics | None = None) -> None:
        self.scheduler = scheduler
        self.metrics = metrics
        self.me = "partitions-" + "-".join(str(p) for p in sorted(partitions))
        self.pools = tuple(pools)  # every pool's counts are read (the pool manager sizes them all)
        self._exchange = getattr(queue, "exchange_board", None)
        self._claim = getattr(queue, "claim_board", None)
        self._leave = getattr(queue, "leave_board", None)
        self._stored: dict[str, str] = {}  # what the board holds of ours, as far as we know
        self._afresh = True  # the first store learns what an earlier life of ours left there
        self._seen = False  # whether an exchange has told us who else is on the board
        self._last = 0.0
        self.peers = 0  # other coordinators on the board, at the last exchange

    def due(self) -> float:
        """Seconds until the next exchange is due: every EVERY_S while this coordinator or
        another has work in flight or waiting, every IDLE_EVERY_S otherwise."""
        s = self.scheduler
        busy = s.queued() or s.inflight_count() or s.elsewhere
        return max(0.0, self._last + (board.EVERY_S if busy else board.IDLE_EVERY_S) - time.monotonic())

    async def exchange(self, *, force: bool = False) -> None:
        """Store what changed of our counts and read the others' (when due, or `force`)."""
        if self._exchange is None or (not force and self.due() > 0):
            return
        for _ in range(2):
            afresh = self._afresh
            if afresh:
                self._stored = {}
            mine = board.items(self.scheduler.snapshot())
            store = {k: v for k, v in mine.items() if self._stored.get(k) != v}
            drop = [k for k in self._stored if k not in mine]
            wanted = self.scheduler.wanted(self.pools)
            self._afresh = True  # until we know what the board holds of ours
            existed, found, held = await self._exchange(self.me, store, drop, wanted, ttl_s=board.STALE_AFTER_S,
                                                        afresh=afresh)
            # What an earlier life of ours left that we do not have (yet) stays until the next
            # exchange drops it: until then it overstates, the safe way.
            self._stored = {**{k: "" for k in held}, **mine}
            self._afresh, self._seen, self.peers = False, True, len(found)
            if self.metrics is not None:
                self.metrics.board_seen(self.peers + 1)
            self.scheduler.set_elsewhere(board.from_items(pair for values in found for pair in zip(wanted, values)))
            self._last = time.monotonic()
            if existed or afresh:
                return
            # Our hash had expired (a long pause) or Redis lost it: what we did not send again
            # is missing there. Store everything.
            log.warning("coordinator.board_lost", coordinator=self.me)
            self._afresh = True

    async def claim(self, items: list[scheduling.Ready],
                    retake: Callable[[], Iterable[scheduling.Ready]]) -> list[scheduling.Ready]:
        """The attempts of `items` (just taken) that may go. Those of a scope with a limit, and
        (while other coordinators share the pools, or before we know) those of every pool, are
        claimed on the board first; those the board refuses (another coordinator spent the
        room) are put back, and `retake` takes again with the board's fresh counts, a few
        times. What is still refused waits for a later cycle. Should the board not answer,
        everything taken is put back before the error goes on."""
        if self._claim is None or not items:
            return items
        try:
            for tries_left in range(CLAIM_TRIES - 1, -1, -1):
                claim = self.scheduler.claim(items, pools=self._pools_shared())
                if not claim:
                    return items
                found = await self._send(claim)
                if found is None:  # we were not on the board: we are now; claim again
                    continue
                if found.stored:
                    return items
                back = [i for i in items if i.pool in found.over_pools or (i.tenant, None) in found.over
                        or (i.tenant, i.project) in found.over]
                log.debug("coordinator.claim_refused", scopes=sorted(map(str, found.over)),
                          pools=sorted(found.over_pools), attempts=len(back))
                items = self._put_back(items, back)
                if tries_left:
                    items += list(retake())
            # Refused every time: what needs a claim waits for a later cycle; the rest goes.
            return self._put_back(items, [i for i in items if self.scheduler.claim([i], pools=self._pools_shared())])
        except BaseException:
            self.scheduler.untake(items)
            raise

    def _pools_shared(self) -> bool:
        return not self._seen or self.peers > 0

    async def _send(self, claim: board.Claim) -> board.Outcome | None:
        """Put the claim to the board; None when we were not on it (then we join)."""
        args = claim.args(self.scheduler.snapshot())
        self._afresh, afresh = True, self._afresh  # (if no answer comes, we do not know what it stored)
        status, over, sums = await self._claim(self.me, args, ttl_s=board.STALE_AFTER_S)  # type: ignore[misc]
        self._afresh = afresh
        if status < 0:
            await self.exchange(force=True)
            return None
        found = board.outcome(claim, status > 0, over, sums)
        if self.metrics is not None:
            self.metrics.board_claim(found.stored)
        if found.stored:
            self._stored.update(zip(args[0::3], args[1::3]))
        self.scheduler.set_elsewhere(board.merge(self.scheduler.elsewhere, found.others, claim.asked()))
        return found

    def _put_back(self, items: list[scheduling.Ready], back: list[scheduling.Ready]) -> list[scheduling.Ready]:
        self.scheduler.untake(back)
        gone = {id(i) for i in back}
        return [i for i in items if id(i) not in gone]

    async def leave(self) -> None:
        """Take our counts off the board (stopping) if nothing of ours is in flight, so the
        others need not wait for them to expire. Attempts still in flight stay counted: the
        counts expire STALE_AFTER_S later, or our successor (same partitions) takes them over."""
        if self._leave is not None and not self.scheduler.inflight_count():
            await self._leave(self.me)

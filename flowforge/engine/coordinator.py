"""The coordinator: consumes its partitions' event streams, advances runs with the pure state
machine, writes each cycle's transitions to Postgres in one transaction, then dispatches ready
attempts and acknowledges the events. Postgres first, Redis second: a crash in between leaves
work the reconciler finds again, never a transition that was announced but not stored."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from flowforge import errors, ports, wire
from flowforge.domain import machine, model, routing
from flowforge.domain.model import Run
from flowforge.domain.states import RUN_TERMINAL, TASK_ACTIVE, TaskStatus
from flowforge.engine import board_feed, envelopes, events as stream_events, quota_feed, scheduling, timers

log = structlog.get_logger("flowforge.coordinator")


@dataclass(frozen=True)
class Options:
    partitions: tuple[int, ...]
    batch_size: int = 1000
    block_s: float = 0.5
    prefetch: float = 1.0  # in-flight beyond a pool's slots, as a multiple of its slots
    max_cached_runs: int = 10_000
    machine: machine.Config = machine.Config()
    fair_share: bool = True  # across tenants, by weight; off: first come, first served


@dataclass
class _Cycle:
    """What one cycle collected: writes, dispatches, stop signals and timers."""

    now: float
    batch: ports.WriteBatch = field(default_factory=ports.WriteBatch)
    stops: list[tuple[str, str, int]] = field(default_factory=list)
    timers: list[timers.Timer] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    dispatched: list[scheduling.Ready] = field(default_factory=list)  # in the order of its dispatches


class Coordinator:
    def __init__(
        self,
        *,
        store: ports.RunStore,
        queue: ports.WorkQueue,
        clock: ports.Clock,
        capacity: Callable[[str], int],
        options: Options,
        shapes: Mapping[str, routing.SlotShape] | None = None,
        metrics: ports.Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.queue = queue
        self.clock = clock
        self.options = options
        self.runs: OrderedDict[str, tuple[Run, int]] = OrderedDict()  # run id -> (run, partition)
        self.scheduler = scheduling.Scheduler(capacity, options.prefetch, fair=options.fair_share)
        self.quotas = quota_feed.QuotaFeed(self.scheduler, store, queue, options.partitions, shapes)
        self.board = board_feed.BoardFeed(self.scheduler, queue, options.partitions,
                                          pools=[*(shapes or {}), model.HEAVY_POOL], metrics=metrics)
        self.timers = timers.Timers()
        # A fan-out's next chunk waits while the run already has a chunk's worth of attempts
        # queued for the pool: (run, key, attempt) -> (its expand timer, the pool).
        self._parked: dict[tuple[str, str, int], tuple[timers.Timer, str]] = {}
        self.stopping = asyncio.Event()
        # The reconciler runs beside the event loop; both change the held runs only under this.
        self.lock = asyncio.Lock()
        self.cycles = 0
        # Seconds spent per phase and events handled, for metrics and benchmarks.
        self.timing: dict[str, float] = {"read": 0.0, "decide": 0.0, "write": 0.0, "publish": 0.0, "events": 0}

    # ---- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()

    async def run_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.cycle()
                if not self.board.due():
                    async with self.lock:
                        await self.board.exchange()
                await self.quotas.publish_waits()
            except errors.TemporaryError as exc:
                log.warning("coordinator.backend_unavailable", error=str(exc))
                await self._reset(exc.delay)
            except Exception:
                # A bug must not stop the coordinator: drop what we hold (Postgres has the
                # truth), re-read our unacknowledged events, and carry on.
                log.exception("coordinator.cycle_failed")
                await self._reset(1.0)

    async def _reset(self, delay: float) -> None:
        async with self.lock:
            self._forget(set(self.runs))
            reset = getattr(self.queue, "reset", None)
            if reset is not None:
                reset()
        await asyncio.sleep(delay)

    # ---- one cycle -----------------------------------------------------------------------

    async def cycle(self) -> int:
        """Read a batch of events (waiting at most until the next timer), and handle it."""
        wait = self.options.block_s
        nxt = self.timers.next_at()
        if nxt is not None:
            wait = max(0.0, min(wait, nxt - self.clock.now()))
        wait = min(wait, self.board.due())  # (the exchange after this read must not be late)
        t0 = time.perf_counter()
        deliveries = await self.queue.read_events(
            self.options.partitions, self.options.batch_size, max(1, int(wait * 1000))
        )
        self.timing["read"] += time.perf_counter() - t0
        self.timing["events"] += len(deliveries)
        now = self.clock.now()
        due = self._park(self.timers.due(now, self.options.batch_size))
        if not deliveries and not due:
            await self._dispatch_only(now)
            return 0
        await self.handle(deliveries, due, now)
        self.cycles += 1
        return len(deliveries) + len(due)

    async def handle(
        self, deliveries: Sequence[ports.Delivery], due: Sequence[timers.Timer], now: float
    ) -> None:
        events: list[tuple[str, machine.Event]] = []
        for d in deliveries:
            parsed = stream_events.decode(d.envelope)
            if parsed is None:
                log.warning("coordinator.unreadable_event", stream=d.stream, kind=d.envelope.get("k"))
            else:
                events.append(parsed)
        # Timers of runs we no longer hold are dropped: loading a run re-arms its timers.
        events.extend(
            (t.run_id, machine.TimerDue(t.key, t.attempt, t.kind)) for t in due if t.run_id in self.runs
        )
        try:
            await self.handle_events(events, deliveries, now)
        except errors.TemporaryError:
            raise
        except Exception as exc:
            # Something in this batch cannot be stored (a bug, or data Postgres refuses). Find
            # it by handling the events one by one, so one bad event cannot stall a partition.
            log.warning("coordinator.batch_failed", events=len(events), error=repr(exc))
            await self._one_by_one(deliveries, due, now)

    async def _one_by_one(
        self, deliveries: Sequence[ports.Delivery], due: Sequence[timers.Timer], now: float
    ) -> None:
        singles: list[tuple[tuple[str, machine.Event] | None, ports.Delivery | None]] = [
            (stream_events.decode(d.envelope), d) for d in deliveries
        ]
        singles += [((t.run_id, machine.TimerDue(t.key, t.attempt, t.kind)), None) for t in due]
        for parsed, delivery in singles:
            acks = [delivery] if delivery is not None else []
            try:
                await self.handle_events([parsed] if parsed else [], acks, now)
                continue
            except errors.TemporaryError:
                raise
            except Exception as exc:
                error = repr(exc)
            substitute = stream_events.substitute(parsed, error) if parsed else None
            log.error("coordinator.poison_event", **stream_events.context(parsed), error=error,
                      substituted=substitute is not None)
            try:
                if substitute is not None:
                    await self.handle_events([substitute], acks, now)
                    continue
            except errors.TemporaryError:
                raise
            except Exception:
                log.exception("coordinator.poison_event_dropped", **stream_events.context(parsed))
            if acks:  # drop it: acknowledged without effect, so it is not read again
                await self.queue.commit((), (), acks)

    async def handle_events(
        self,
        events: Sequence[tuple[str, machine.Event]],
        deliveries: Sequence[ports.Delivery] = (),
        now: float | None = None,
    ) -> None:
        async with self.lock:
            await self._handle_locked(events, deliveries, self.clock.now() if now is None else now)

    async def _handle_locked(
        self,
        events: Sequence[tuple[str, machine.Event]],
        deliveries: Sequence[ports.Delivery],
        now: float,
    ) -> None:
        for attempt in range(2):
            t0 = time.perf_counter()
            await self._load([run_id for run_id, _ in events if run_id not in self.runs])
            cyc = _Cycle(now)
            for run_id, ev in events:
                entry = self.runs.get(run_id)
                if entry is not None:
                    self._apply(entry[0], entry[1], ev, cyc)
            await self._take_back()
            dispatches = await self._schedule(cyc)
            t1 = time.perf_counter()
            self.timing["decide"] += t1 - t0
            try:
                missed = await self.store.apply(cyc.batch)
            except BaseException:
                self._forget(cyc.touched)  # our copies ran ahead of Postgres; reload them
                raise
            t2 = time.perf_counter()
            self.timing["write"] += t2 - t1
            if not missed:
                break
            # Another writer moved these runs on: drop our copies of everything this cycle
            # touched (the transaction rolled back as a whole) and replay on fresh state.
            log.info("coordinator.cas_conflict", runs=len(missed), retry=attempt == 0)
            self._forget(cyc.touched)
        else:
            # Still conflicting: leave the events unacknowledged and read them again.
            reset = getattr(self.queue, "reset", None)
            if reset is not None:
                reset()
            return
        for t in cyc.timers:
            self.timers.arm(t)
        self._placed(cyc, await self.queue.commit(dispatches, cyc.stops, deliveries))
        self._unpark(now)
        self.timing["publish"] += time.perf_counter() - t2
        ended = {r for r, _ in events if (e := self.runs.get(r)) is not None and e[0].status in RUN_TERMINAL}
        self._forget(ended)
        self._evict(cyc.touched)

    def _evict(self, recent: set[str]) -> None:
        """Keep the cache bounded, dropping the runs least recently touched. A dropped run is
        reloaded from Postgres on its next event. Runs with work waiting or in flight, or with a
        timer armed (a retry's backoff, a fan-out's next chunk), stay."""
        for run_id in recent:
            if run_id in self.runs:
                self.runs.move_to_end(run_id)
        excess = len(self.runs) - self.options.max_cached_runs
        if excess > 0:
            oldest = []
            for run_id in self.runs:
                if len(oldest) == excess:
                    break
                if not self.scheduler.has_work(run_id) and not self.timers.armed_for(run_id):
                    oldest.append(run_id)
            self._forget(set(oldest))

    async def _dispatch_only(self, now: float) -> None:
        """Free slots may have opened without events of ours (another partition's work ended)."""
        async with self.lock:
            await self._take_back()
            await self._dispatch_locked(now)

    async def _dispatch_locked(self, now: float) -> None:
        cyc = _Cycle(now)
        dispatches = await self._schedule(cyc)
        if dispatches:
            if await self.store.apply(cyc.batch):
                self._forget(cyc.touched)
            else:
                self._placed(cyc, await self.queue.dispatch(dispatches))
        self._unpark(now)  # (also when `take` only dropped stale attempts)

    def _park(self, due: list[timers.Timer]) -> list[timers.Timer]:
        """Hold back the fan-out chunks not needed yet: a run with a chunk's worth of attempts
        already waiting for the pool makes no more until they are dispatched (`_unpark`). So a
        map's instances are made as its pool takes them: a flood that waits behind another
        tenant's fair share stops making instances, and its memory stays bounded. (A cancel
        needs no timer: it stops the making and settles the parent itself.)"""
        chunk = self.options.machine.expand_chunk
        if chunk <= 0:
            return due
        out = []
        for t in due:
            entry = self.runs.get(t.run_id) if t.kind == model.TIMER_EXPAND else None
            if entry is not None:
                task = entry[0].tasks.get(t.key)
                pool = entry[0].dispatch_pool(task.name) if task is not None else None
                if pool is not None and self.scheduler.waiting(t.run_id, pool) >= chunk:
                    self._parked[(t.run_id, t.key, t.attempt)] = (t, pool)
                    continue
            out.append(t)
        return out

    def _unpark(self, now: float) -> None:
        """Arm again, due now, the parked chunks whose run has fewer than a chunk waiting."""
        if not self._parked:
            return
        chunk = self.options.machine.expand_chunk
        for ident, (t, pool) in list(self._parked.items()):  # (`_forget` drops a forgotten run's)
            if self.scheduler.waiting(t.run_id, pool) < chunk:
                del self._parked[ident]
                self.timers.arm(timers.Timer(now, t.run_id, t.key, t.attempt, t.kind))

    def _placed(self, cyc: _Cycle, entry_ids: Sequence[bytes]) -> None:
        for item, entry_id in zip(cyc.dispatched, entry_ids):
            self.scheduler.placed(item, entry_id)

    async def _take_back(self) -> None:
        """A tenant waits below its fair share while others' prefetched entries fill the pool:
        take back those no agent has read yet. They queue again, and the schedule that follows
        gives their room to the tenant that waits, so its attempts do not queue in the stream
        behind them. (Should the cycle's write then fail, a run it reloads counts such an
        attempt as dispatched; the reconciler dispatches it again once it sees no entry.)"""
        for (partition, pool), entry_ids in self.scheduler.revocable().items():
            taken = await self.queue.revoke(partition, pool, entry_ids)
            back = self.scheduler.revoked(partition, pool, entry_ids, taken)
            if back:
                log.debug("coordinator.prefetch_taken_back", pool=pool, attempts=back)

    def _apply(self, run: Run, partition: int, event: machine.Event, cyc: _Cycle) -> None:
        before_status, before_cancel, before_retries = run.status, run.cancel_requested, run.retries
        m, unstarted = self.metrics, None
        if m is not None and (type(event) is machine.Finished or type(event) is machine.Started):
            # An attempt not known to have started yet: its start is learnt from this event
            # (quick attempts announce their start only in their result).
            prior = run.tasks.get(event.key)
            if prior is not None and prior.attempt == event.attempt and prior.status == TaskStatus.QUEUED:
                unstarted = event
        effects = machine.advance(run, event, cyc.now, self.options.machine)
        if not effects and run.cancel_requested == before_cancel:
            return
        cyc.touched.add(run.run_id)
        b = cyc.batch
        for fx in effects:
            match fx:
                case machine.TaskChanged(before=before, after=after):
                    k = (run.run_id, after.key)
                    prior = b.tasks.get(k)
                    if prior is not None:
                        prior.task = after
                    else:
                        tspec = run.dag.tasks[after.name]
                        b.tasks[k] = ports.TaskWrite(
                            run.run_id, run.tenant, None if before is None else before.status,
                            0 if before is None else before.attempt, after, tspec.pool, run.executor(after.name),
                        )
                    if before is not None and before.status in TASK_ACTIVE and (
                        after.status not in TASK_ACTIVE or after.attempt != before.attempt
                    ):
                        self.scheduler.done(run.run_id, after.key)
                case machine.AttemptChanged(status="queued"):
                    pass  # the attempt row is written when the attempt is dispatched
                case machine.AttemptChanged():
                    _merge_attempt(b, run, fx)
                    if fx.status == "failed":
                        log.info("coordinator.attempt_failed", tenant=run.tenant, run=run.run_id, task=fx.key,
                                 attempt=fx.attempt, reason=fx.reason)
                    if m is not None:
                        self._observe(m, run, fx, unstarted)
                case machine.Enqueue(task=task):
                    cost = self.quotas.cost_of(run, task.name, fx.pool)
                    self.scheduler.offer(envelopes.ready_item(run, partition, task, fx, cyc.now, cost))
                case machine.StopAttempt(key=key, attempt=n):
                    cyc.stops.append((run.run_id, key, n))
                case machine.ArmTimer(key=key, attempt=n, kind=kind, at=at):
                    cyc.timers.append(timers.Timer(at, run.run_id, key, n, kind))
                case machine.RunChanged():
                    pass
        if run.status != before_status or run.cancel_requested != before_cancel or run.retries != before_retries:
            prior = b.runs.get(run.run_id)
            b.runs[run.run_id] = ports.RunWrite(
                run.run_id, prior.before if prior else before_status, run.status,
                run.cancel_requested, run.error, cyc.now, run.retries,
            )
            if m is not None and run.status in RUN_TERMINAL and before_status not in RUN_TERMINAL:
                m.run_ended(run.tenant, run.status)

    def _observe(self, m: ports.Metrics, run: Run, fx: machine.AttemptChanged,
                 unstarted: machine.Started | machine.Finished | None) -> None:
        """Dispatch-to-start when an attempt's start becomes known (from `unstarted`, the event
        of an attempt not known to have started); its duration when it ends. (A cycle replayed
        after a compare-and-set conflict observes its attempts again: rare.)"""
        status = fx.status
        task = run.tasks[fx.key]
        pool = run.dispatch_pool(task.name)
        began = fx.started_at
        if unstarted is not None and unstarted.key == fx.key and unstarted.attempt == fx.attempt:
            reported = unstarted.started_at if type(unstarted) is machine.Finished else began
            if reported is None:
                began = None  # ended without ever starting (dead-lettered)
            elif began is not None:
                since = self.scheduler.since(run.run_id, fx.key)
                if since is not None:
                    m.started(pool, began - since)
        elif began is None and task.attempt == fx.attempt:
            began = task.started_at  # stopped by a timer or a cancel while running
        if status != "running" and began is not None and fx.finished_at is not None:
            m.finished(pool, status, fx.finished_at - began)

    async def _schedule(self, cyc: _Cycle) -> list[tuple[int, str, bytes]]:
        """Take what goes now, claim on the board what counts against a limit, and record it."""
        out = []

        def wanted(item: scheduling.Ready) -> bool:
            entry = self.runs.get(item.run_id)
            if entry is None:
                return False
            task = entry[0].tasks.get(item.key)
            return task is not None and task.attempt == item.attempt and task.status in TASK_ACTIVE

        dispatched = self.clock.now()  # after this cycle's loads: when the hand-off begins
        m = self.metrics

        def take() -> list[scheduling.Ready]:
            return list(self.scheduler.take(wanted, dispatched))

        for item in await self.board.claim(take(), take):
            cyc.touched.add(item.run_id)
            cyc.dispatched.append(item)
            env = dict(item.envelope, dispatched_at=dispatched)
            out.append((item.partition, item.pool, wire.pack(wire.DISPATCH, **env)))
            # An attempt's row appears when it is handed to its pool; until then the task row
            # (queued, attempt n) is the whole story, and a reload re-queues it.
            cyc.batch.attempts[(item.run_id, item.key, item.attempt)] = ports.AttemptWrite(
                item.run_id, item.tenant, item.key, item.attempt, "queued", pool=item.pool,
                queued_at=item.envelope["queued_at"], dispatched_at=dispatched,
            )
            if m is not None and not item.again:
                m.dispatched(item.tenant, item.pool, dispatched - item.envelope["queued_at"])
        return out

    # ---- the run cache -------------------------------------------------------------------

    async def _load(self, run_ids: Sequence[str]) -> list[str]:
        wanted = list(dict.fromkeys(run_ids))
        if not wanted:
            return []
        loaded = await self.store.load_runs(wanted)
        for run_id, lr in loaded.items():
            self.adopt(lr)
        return list(loaded)

    def adopt(self, lr: ports.LoadedRun) -> None:
        """Hold a run loaded from Postgres: re-arm its timers, re-queue what was never dispatched."""
        run = lr.run
        self.runs[run.run_id] = (run, lr.partition)
        for task in run.tasks.values():
            if task.timer is not None and task.timer_at is not None:
                self.timers.arm(timers.Timer(task.timer_at, run.run_id, task.key, task.attempt, task.timer))
            if task.key in lr.undispatched:
                tspec = run.dag.tasks[task.name]
                try:
                    args = model.resolve_args(run, task)
                except Exception as exc:  # the machine fails the task on its next event
                    log.warning("coordinator.unresolvable_args", run=run.run_id, task=task.key, attempt=task.attempt,
                                error=str(exc))
                    continue
                fx = machine.Enqueue(task, run.dispatch_pool(task.name), tspec.fn, args, tspec.timeout_seconds)
                cost = self.quotas.cost_of(run, task.name, fx.pool)
                queued_at = task.queued_at or self.clock.now()
                self.scheduler.offer(envelopes.ready_item(run, lr.partition, task, fx, queued_at, cost))
            elif task.key in lr.dispatched_at:
                pool = run.dispatch_pool(task.name)
                self.scheduler.mark_inflight(
                    run.run_id, task.key, pool, lr.dispatched_at[task.key], run.tenant,
                    project=run.project, cost=self.quotas.cost_of(run, task.name, pool),
                )

    def _forget(self, run_ids: set[str]) -> None:
        for run_id in run_ids:
            self.runs.pop(run_id, None)
        self.scheduler.forget_runs(set(run_ids))
        self.timers.disarm_runs(run_ids)
        if self._parked:
            for ident in [i for i in self._parked if i[0] in run_ids]:
                del self._parked[ident]

    def held(self, run_id: str) -> Run | None:
        entry = self.runs.get(run_id)
        return entry[0] if entry else None


def _merge_attempt(b: ports.WriteBatch, run: Run, fx: machine.AttemptChanged) -> None:
    k = (run.run_id, fx.key, fx.attempt)
    w = b.attempts.get(k)
    if w is None:
        pool = run.dag.tasks[run.tasks[fx.key].name].pool
        w = b.attempts[k] = ports.AttemptWrite(run.run_id, run.tenant, fx.key, fx.attempt, fx.status, pool=pool)
    w.status = fx.status
    for name in ("queued_at", "started_at", "finished_at", "agent", "error", "reason"):
        value = getattr(fx, name)
        if value is not None:
            setattr(w, name, value)
    if fx.logs:
        w.logs = list(fx.logs)


class SystemClock:
    def now(self) -> float:
        return time.time()

"""The coordinator: consumes its partitions' event streams, advances runs with the pure state
machine, writes each cycle's transitions to Postgres in one transaction, then dispatches ready
attempts and acknowledges the events. Postgres first, Redis second: a crash in between leaves
work the reconciler finds again, never a transition that was announced but not stored."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from flowforge import errors, ports, wire
from flowforge.domain import machine, model, spec
from flowforge.domain.model import Run
from flowforge.domain.states import RUN_TERMINAL, TASK_ACTIVE
from flowforge.engine import scheduling, timers

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


class Coordinator:
    def __init__(
        self,
        *,
        store: ports.RunStore,
        queue: ports.WorkQueue,
        clock: ports.Clock,
        capacity: Callable[[str], int],
        options: Options,
    ) -> None:
        self.store = store
        self.queue = queue
        self.clock = clock
        self.options = options
        self.runs: OrderedDict[str, tuple[Run, int]] = OrderedDict()  # run id -> (run, partition)
        self.scheduler = scheduling.Scheduler(capacity, options.prefetch, fair=options.fair_share)
        self.timers = timers.Timers()
        self._stopping = asyncio.Event()
        # The reconciler runs beside the event loop; both change the held runs only under this.
        self.lock = asyncio.Lock()
        self.cycles = 0
        # Seconds spent per phase and events handled, for metrics and benchmarks.
        self.timing: dict[str, float] = {"read": 0.0, "decide": 0.0, "write": 0.0, "publish": 0.0, "events": 0}

    # ---- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def follow_tenant_limits(self, every_s: float = 1.0) -> None:
        """Keep the scheduler's tenant quotas and weights as Postgres has them."""
        read = getattr(self.store, "tenant_limits", None)
        if read is None:
            return
        while not self._stopping.is_set():
            try:
                quotas, weights = await read()
                self.scheduler.set_quotas(quotas)
                self.scheduler.set_weights(weights)
            except errors.TemporaryError as exc:
                log.warning("coordinator.tenant_limits_unavailable", error=str(exc))
            await asyncio.sleep(every_s)

    async def run_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.cycle()
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
        t0 = time.perf_counter()
        deliveries = await self.queue.read_events(
            self.options.partitions, self.options.batch_size, max(1, int(wait * 1000))
        )
        self.timing["read"] += time.perf_counter() - t0
        self.timing["events"] += len(deliveries)
        now = self.clock.now()
        due = self.timers.due(now, self.options.batch_size)
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
            parsed = _event(d.envelope)
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
            (_event(d.envelope), d) for d in deliveries
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
            substitute = _substitute(parsed, error) if parsed else None
            log.error("coordinator.poison_event", run=parsed[0] if parsed else None, error=error,
                      substituted=substitute is not None)
            try:
                if substitute is not None:
                    await self.handle_events([substitute], acks, now)
                    continue
            except errors.TemporaryError:
                raise
            except Exception:
                log.exception("coordinator.poison_event_dropped", run=parsed[0] if parsed else None)
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
            dispatches = self._schedule(cyc)
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
        await self.queue.commit(dispatches, cyc.stops, deliveries)
        self.timing["publish"] += time.perf_counter() - t2
        ended = {r for r, _ in events if (e := self.runs.get(r)) is not None and e[0].status in RUN_TERMINAL}
        self._forget(ended)
        self._evict(cyc.touched)

    def _evict(self, recent: set[str]) -> None:
        """Keep the cache bounded, dropping the runs least recently touched. A dropped run is
        reloaded from Postgres on its next event. Runs with work waiting or in flight stay."""
        for run_id in recent:
            if run_id in self.runs:
                self.runs.move_to_end(run_id)
        excess = len(self.runs) - self.options.max_cached_runs
        if excess > 0:
            oldest = []
            for run_id in self.runs:
                if len(oldest) == excess:
                    break
                if not self.scheduler.has_work(run_id):
                    oldest.append(run_id)
            self._forget(set(oldest))

    async def _dispatch_only(self, now: float) -> None:
        """Free slots may have opened without events of ours (another partition's work ended)."""
        async with self.lock:
            await self._dispatch_locked(now)

    async def _dispatch_locked(self, now: float) -> None:
        cyc = _Cycle(now)
        dispatches = self._schedule(cyc)
        if dispatches:
            if await self.store.apply(cyc.batch):
                self._forget(cyc.touched)
            else:
                await self.queue.dispatch(dispatches)

    def _apply(self, run: Run, partition: int, event: machine.Event, cyc: _Cycle) -> None:
        before_status, before_cancel, before_retries = run.status, run.cancel_requested, run.retries
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
                case machine.Enqueue(task=task):
                    self.scheduler.offer(ready_item(run, partition, task, fx, cyc.now))
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

    def _schedule(self, cyc: _Cycle) -> list[tuple[int, str, bytes]]:
        out = []

        def wanted(item: scheduling.Ready) -> bool:
            entry = self.runs.get(item.run_id)
            if entry is None:
                return False
            task = entry[0].tasks.get(item.key)
            return task is not None and task.attempt == item.attempt and task.status in TASK_ACTIVE

        dispatched = self.clock.now()  # after this cycle's loads: when the hand-off begins
        for item in self.scheduler.take(wanted, cyc.now):
            cyc.touched.add(item.run_id)
            env = dict(item.envelope, dispatched_at=dispatched)
            out.append((item.partition, item.pool, wire.pack(wire.DISPATCH, **env)))
            # An attempt's row appears when it is handed to its pool; until then the task row
            # (queued, attempt n) is the whole story, and a reload re-queues it.
            cyc.batch.attempts[(item.run_id, item.key, item.attempt)] = ports.AttemptWrite(
                item.run_id, item.tenant, item.key, item.attempt, "queued", pool=item.pool,
                queued_at=item.envelope["queued_at"], dispatched_at=dispatched,
            )
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
                    log.warning("coordinator.unresolvable_args", run=run.run_id, task=task.key, error=str(exc))
                    continue
                fx = machine.Enqueue(task, run.dispatch_pool(task.name), tspec.fn, args, tspec.timeout_seconds)
                self.scheduler.offer(ready_item(run, lr.partition, task, fx, task.queued_at or self.clock.now()))
            elif task.key in lr.dispatched_at:
                self.scheduler.mark_inflight(
                    run.run_id, task.key, run.dispatch_pool(task.name), lr.dispatched_at[task.key], run.tenant
                )

    def _forget(self, run_ids: set[str]) -> None:
        for run_id in run_ids:
            self.runs.pop(run_id, None)
        self.scheduler.forget_runs(set(run_ids))
        self.timers.disarm_runs(run_ids)

    def held(self, run_id: str) -> Run | None:
        entry = self.runs.get(run_id)
        return entry[0] if entry else None


def ready_item(run: Run, partition: int, task: model.Task, fx: machine.Enqueue, now: float) -> scheduling.Ready:
    envelope: dict[str, Any] = {
        "tenant": run.tenant,
        "run": run.run_id,
        "task": task.key,
        "attempt": task.attempt,
        "part": partition,
        "pool": fx.pool,
        "fn": fx.fn,
        "args": fx.args,
        "timeout": fx.timeout,
        "map_index": task.map_index,
        "queued_at": now,
    }
    secrets = run.dag.spec.secrets(run.params)
    if secrets:
        envelope["redact"] = secrets  # the agent scrubs them from the attempt's output and error
    if fx.pool == model.HEAVY_POOL:
        envelope["pod"] = pod_request(run.dag.tasks[task.name])
    return scheduling.Ready(run.run_id, partition, run.tenant, task.key, task.attempt, fx.pool, envelope,
                            run.dag.tasks[task.name].priority)


def pod_request(t: spec.TaskSpec) -> dict[str, Any]:
    """What a heavy attempt's Pod runs and needs, as the launcher reads it from the envelope."""
    return {
        "image": t.image, "command": t.command, "env": t.env, "pool": t.pool,
        "resources": t.resources.model_dump(exclude_none=True),
        "node_selector": t.node_selector,
        "tolerations": [x.model_dump(exclude_none=True) for x in t.tolerations],
    }


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


def _generation(env: dict[str, Any]) -> int | None:
    n = env.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _event(env: dict[str, Any]) -> tuple[str, machine.Event] | None:
    kind, run_id = env.get("k"), env.get("run")
    if not isinstance(run_id, str):
        return None
    try:
        match kind:
            case wire.RUN_CREATED:
                return run_id, machine.Start()
            case wire.RUN_CANCEL:
                return run_id, machine.Cancel(_generation(env))
            case wire.RUN_RETRY:
                return run_id, machine.Retry(_generation(env))
            case wire.ATTEMPT_STARTED:
                at = env.get("at")
                return run_id, machine.Started(
                    env["task"], int(env["attempt"]), env.get("agent"), at if isinstance(at, float) else None
                )
            case wire.ATTEMPT_FINISHED:
                return run_id, machine.Finished(
                    key=env["task"],
                    attempt=int(env["attempt"]),
                    ok=bool(env["ok"]),
                    output=env.get("output"),
                    error=env.get("error"),
                    reason=env.get("reason") or "error",
                    retryable=bool(env.get("retryable", True)),
                    started_at=_stamp(env.get("started_at")),
                    finished_at=_stamp(env.get("finished_at")),
                    agent=env.get("agent"),
                    logs=tuple(env.get("logs") or ()),
                )
    except (KeyError, TypeError, ValueError):
        return None
    return None


def _substitute(parsed: tuple[str, machine.Event], error: str) -> tuple[str, machine.Event] | None:
    """What to apply instead of an event that cannot be stored: a result becomes a failure
    naming the problem (not retried: the same code would return the same result)."""
    run_id, ev = parsed
    if isinstance(ev, machine.Finished):
        return run_id, machine.Finished(
            key=ev.key, attempt=ev.attempt, ok=False, reason=wire.FAIL_REJECTED, retryable=False,
            error=f"the attempt's result could not be stored: {error[:2000]}",
            started_at=ev.started_at, finished_at=ev.finished_at, agent=ev.agent,
        )
    return None


def _stamp(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class SystemClock:
    def now(self) -> float:
        return time.time()

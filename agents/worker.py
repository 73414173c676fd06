"""The agent loop: read dispatch entries from the pool's streams, run them in slots, publish
results and acknowledge entries atomically, keep leases alive, take over abandoned entries.

Independent of Ray, so it can be tested and benchmarked on its own; `agents.actor` wraps it
in a resident Ray actor.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import os
import re
import socket
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import redis.asyncio as aioredis
import redis.exceptions as rexc
import structlog

from agents import capture, interrupt, loading, outbox, threads
from agents.outbox import clean, reraise_cancel
from flowforge import keys, sdk, wire

log = structlog.get_logger("flowforge.agent")
_LUA = Path(__file__).parent / "lua"
_MAX_ERROR = 16_384
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # a JSON-escaped NUL, not an escaped backslash


class AttemptFailed(Exception):
    """The attempt failed in a way the runner has already put into words (a Pod's exit code,
    OOMKilled, an eviction): reported with this reason and message, no agent traceback."""

    def __init__(self, reason: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.reason, self.message, self.retryable = reason, message, retryable


@dataclass(frozen=True)
class AgentConfig:
    pool: str
    redis_url: str
    partitions: int = 1
    slots: int = 4
    allowed_functions: tuple[str, ...] = ()
    prewarm: tuple[str, ...] = ()
    lease_s: float = 30.0
    max_deliveries: int = 3
    max_result_bytes: int = 1 << 20
    max_log_line_bytes: int = 8192
    max_log_lines: int = 10_000
    max_log_bytes: int = 1 << 20
    block_ms: int = 1000
    # An attempt announces it started only if it is still running after this long; quicker
    # ones report start and end in their result, saving the coordinator a write per task.
    started_delay_s: float = 0.05
    # Output lines go to the run's live log at least this often, in chunks of at most
    # `log_chunk_lines`; the live stream keeps about `live_log_entries` chunks for
    # `live_log_ttl_s` after its last line; results carry the last `log_tail_lines` lines.
    log_flush_s: float = 0.1
    log_chunk_lines: int = 1000
    live_log_entries: int = 10_000
    live_log_ttl_s: float = 86_400.0
    log_tail_lines: int = 100
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


@dataclass
class _Attempt:
    partition: int
    entry_id: bytes
    env: dict[str, Any]
    received_at: float = 0.0
    slot: interrupt.Slot = field(default_factory=interrupt.Slot)
    task: asyncio.Task[Any] | None = None
    # A sync function that ignored its timeout or cancel: its thread holds the slot until it ends.
    stuck: asyncio.Future[Any] | None = None
    began: float | None = None  # when the task's code started, if a runner knows better (a Pod)
    cap: capture.Capture | None = None  # its output, while it runs
    stop_asked: bool = False  # asked to stop (timeout or cancel)
    sync: bool = False  # runs in a slot thread: `_call` waits for it to stop, never cancels it
    wake: asyncio.Future[None] | None = None  # what a sync call's `_call` waits on: it ended, or a stop

    @property
    def ident(self) -> tuple[str, str, int]:
        return (self.env["run"], self.env["task"], self.env["attempt"])


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.name = config.name
        self.loader = loading.Loader(config.pool, config.allowed_functions)
        self.free = config.slots
        self._has_free = asyncio.Event()
        self._has_free.set()
        self._inflight: dict[tuple[str, str, int], _Attempt] = {}
        self._waiting: deque[_Attempt] = deque()
        self._cancelled: OrderedDict[tuple[str, str, int], None] = OrderedDict()
        self.outbox: outbox.Outbox | None = None
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()
        # Twice the slots: a thread stuck in code that ignores its stop keeps its slot taken (see
        # _hold_slot) while the slot's next attempts run on another thread.
        self._threads = threads.SlotThreads(config.slots * 2)
        self.completed = 0
        self.stuck = 0  # threads still running attempts that were already reported as stopped
        # Recent latencies in seconds: dispatch -> received by us -> function started.
        self.latency: dict[str, deque[float]] = {"delivery": deque(maxlen=1000), "start": deque(maxlen=1000)}
        self.client: aioredis.Redis | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    async def serve(self) -> None:
        capture.install()
        self.loader.prewarm(self.config.prewarm)
        self.client = aioredis.Redis.from_url(self.config.redis_url, decode_responses=False)
        c = self.config
        self.outbox = outbox.Outbox(self.client, c.pool, outbox.LogSettings(
            c.log_chunk_lines, c.live_log_entries, c.live_log_ttl_s), agent=self.name)
        await self.outbox.load_scripts()
        self._reclaim = self.client.register_script((_LUA / "reclaim.lua").read_text())
        for p in range(self.config.partitions):
            await self._ensure_group(p)
        jobs = [asyncio.create_task(self._read(p), name=f"read-p{p}") for p in range(self.config.partitions)]
        jobs += [
            asyncio.create_task(self.outbox.run(self._done), name="publish"),
            asyncio.create_task(self._keep_leases(), name="leases"),
            asyncio.create_task(self._reclaim_loop(), name="reclaim"),
            asyncio.create_task(self._listen_cancels(), name="cancels"),
            asyncio.create_task(self._ship_logs(), name="logs"),
        ]
        log.info("agent.started", agent=self.name, pool=self.config.pool, slots=self.config.slots)
        # What is alive now (Ray, prewarmed modules) lives as long as the agent: keep it out of
        # the collector's full passes, which otherwise stall every slot for 60-100 ms.
        gc.freeze()
        self.ready.set()  # prewarmed and reading: what the pool manager waits for
        stopping = asyncio.create_task(self._stopping.wait(), name="stopping")
        try:
            done, _ = await asyncio.wait([stopping, *jobs], return_when=asyncio.FIRST_COMPLETED)
            for job in done:
                if job is not stopping:
                    # A loop of the agent died: fail loudly so the pool manager replaces us.
                    log.error("agent.loop_died", agent=self.name, loop=job.get_name(), error=repr(job.exception()))
                    raise RuntimeError(f"agent loop {job.get_name()} died: {job.exception()!r}")
        finally:
            stopping.cancel()
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            await self.client.aclose()
            self._threads.close()

    async def stop(self, drain_s: float = 10.0) -> None:
        """Stop taking work, give running attempts `drain_s` to finish, then stop."""
        self.free = -(10**9)  # readers see no free slot
        while self._waiting:  # never started: left to other agents once their lease runs out
            self._inflight.pop(self._waiting.popleft().ident, None)
        deadline = time.monotonic() + drain_s
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        while self.outbox is not None and not self.outbox.empty() and time.monotonic() < deadline + 1:
            await asyncio.sleep(0.01)
        self._stopping.set()

    def stats(self) -> dict[str, Any]:
        def p50_ms(xs: deque[float]) -> float | None:
            return round(sorted(xs)[len(xs) // 2] * 1000, 3) if xs else None

        return {"agent": self.name, "pool": self.config.pool, "running": len(self._inflight) - len(self._waiting),
                "waiting": len(self._waiting),
                "completed": self.completed, "pid": os.getpid(), "stuck": self.stuck,
                "delivery_ms_p50": p50_ms(self.latency["delivery"]),
                "start_ms_p50": p50_ms(self.latency["start"])}

    # ---- reading and running -------------------------------------------------------------

    async def _ensure_group(self, partition: int) -> None:
        assert self.client is not None
        try:
            await self.client.xgroup_create(
                keys.pool_stream(partition, self.config.pool), keys.AGENT_GROUP, id="0", mkstream=True
            )
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self, partition: int) -> None:
        assert self.client is not None
        stream = keys.pool_stream(partition, self.config.pool)
        while True:
            await self._has_free.wait()
            if self.free <= 0:
                self._has_free.clear()
                continue
            try:
                reply = await self.client.xreadgroup(
                    keys.AGENT_GROUP, self.name, {stream: ">"}, count=self.free, block=self.config.block_ms
                )
            except rexc.ResponseError as exc:
                # NOGROUP / UNBLOCKED: Redis lost the stream (a flush, a failover). Recreate it.
                log.warning("agent.stream_lost", agent=self.name, stream=stream, error=str(exc))
                try:
                    await self._ensure_group(partition)
                except (rexc.ConnectionError, rexc.TimeoutError):
                    reraise_cancel()  # redis-py may turn a cancel into a ConnectionError
                    await asyncio.sleep(1)
                continue
            except (rexc.ConnectionError, rexc.TimeoutError) as exc:
                reraise_cancel()  # redis-py may turn a cancel into a ConnectionError
                log.warning("agent.redis_unavailable", agent=self.name, error=str(exc))
                await asyncio.sleep(1)
                continue
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self._begin(partition, entry_id, fields)

    def _begin(self, partition: int, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        try:
            env = wire.unpack((fields or {})[keys.ENTRY_FIELD])
            ident = (env["run"], env["task"], env["attempt"])
        except (wire.WireError, KeyError) as exc:
            # Unreadable: acknowledge it away so it cannot block the stream; nothing to report to.
            log.error("agent.unreadable_entry", entry=entry_id, error=str(exc))
            self.outbox.acknowledge(partition, entry_id)
            return
        if ident in self._inflight:
            return  # a lease renewal raced a reclaim; we already run it
        attempt = _Attempt(partition, entry_id, env, received_at=time.time())
        if isinstance(env.get("dispatched_at"), float):
            self.latency["delivery"].append(attempt.received_at - env["dispatched_at"])
        self._inflight[ident] = attempt  # its lease is renewed from now on
        if self.free > 0:
            self._start(attempt)
        else:
            # Readers of several partitions (and the reclaimer) can together take more than
            # the free slots; the surplus waits here for a slot, leased, in arrival order.
            self._waiting.append(attempt)

    def _start(self, attempt: _Attempt) -> None:
        self.free -= 1
        if self.free <= 0:
            self._has_free.clear()
        attempt.task = asyncio.create_task(self._run(attempt), name=f"attempt {attempt.ident}")

    async def _run(self, a: _Attempt) -> None:
        env = a.env
        started_at = time.time()
        event: dict[str, Any] = {
            "tenant": env.get("tenant"), "run": env["run"], "task": env["task"],
            "attempt": env["attempt"], "agent": self.name, "started_at": started_at,
        }
        try:
            if a.ident in self._cancelled:
                event.update(ok=False, reason=wire.FAIL_CANCELLED, error="cancelled before it started")
                return
            announce = asyncio.get_running_loop().call_later(
                self.config.started_delay_s, self._announce, a.partition, event
            )
            cap = capture.Capture(
                max_line_bytes=self.config.max_log_line_bytes, max_lines=self.config.max_log_lines,
                max_bytes=self.config.max_log_bytes, redact=tuple(env.get("redact") or ()),
                tail=self.config.log_tail_lines,
            )
            a.cap = cap
            try:
                output = await self._call(a, cap)
                event.update(ok=True, output=output)
                self._check_result(output)
            except loading.Rejected as exc:
                event.update(ok=False, reason=wire.FAIL_REJECTED, retryable=False, error=str(exc), output=None)
            except AttemptFailed as exc:
                event.update(ok=False, reason=exc.reason, retryable=exc.retryable, error=exc.message, output=None)
            except interrupt.AttemptInterrupted as exc:
                reason = str(exc)
                event.update(ok=False, reason=reason if reason in (wire.FAIL_TIMEOUT, wire.FAIL_CANCELLED)
                             else wire.FAIL_CANCELLED, error=_interrupt_message(reason, env))
            except (asyncio.CancelledError, TimeoutError) as exc:
                if a.slot.interrupted is None and isinstance(exc, asyncio.CancelledError):
                    raise  # the agent itself is shutting down
                reason = a.slot.interrupted or wire.FAIL_TIMEOUT
                event.update(ok=False, reason=reason, error=_interrupt_message(reason, env))
            except Exception:
                event.update(ok=False, reason=wire.FAIL_ERROR, error=traceback.format_exc()[-_MAX_ERROR:])
            event["logs"] = cap.finish()
            announce.cancel()
        finally:
            event["finished_at"] = time.time()
            for secret in env.get("redact") or ():  # a traceback may quote a secret argument
                if isinstance(event.get("error"), str):
                    event["error"] = event["error"].replace(secret, "***")
            if a.began is not None:
                event["started_at"] = a.began
            self._ship(a)  # every line reaches the live log before the result
            a.cap = None
            self.outbox.result(a.partition, a.entry_id, _pack_result(event))

    async def _ship_logs(self) -> None:
        """Send what running attempts printed since the last round to their runs' live logs."""
        while True:
            await asyncio.sleep(self.config.log_flush_s)
            for a in list(self._inflight.values()):
                self._ship(a)

    def _ship(self, a: _Attempt) -> None:
        if a.cap is not None:
            self.outbox.lines(a.partition, a.env, a.cap.take())

    def _announce(self, partition: int, event: dict[str, Any]) -> None:
        started = {k: event[k] for k in ("tenant", "run", "task", "attempt", "agent")}
        self.outbox.event(partition, wire.pack(wire.ATTEMPT_STARTED, **started, at=event["started_at"]))

    async def _call(self, a: _Attempt, cap: capture.Capture) -> Any:
        env = a.env
        fn, is_async = self.loader.load(env["fn"])
        a.began = time.time()  # the task's code starts now: a cold import counts against the start
        args = env.get("args") or []
        timeout = env.get("timeout")
        ctx = sdk.TaskContext(
            run_id=env["run"], task=env["task"], attempt=env["attempt"], tenant=env.get("tenant") or "",
            map_index=env.get("map_index"), cancelled=threading.Event(),
        )
        a.ctx = ctx  # type: ignore[attr-defined]
        sdk._set_context(ctx)
        capture.activate(cap)
        if is_async:
            self.latency["start"].append(time.time() - a.received_at)
            coro = fn(**args) if isinstance(args, dict) else fn(*args)
            return await asyncio.wait_for(coro, timeout) if timeout else await coro
        context = contextvars.copy_context()
        a.sync = True
        future = self._threads.submit(context.run, a.slot.call, fn, args)
        future.add_done_callback(lambda _: self.latency["start"].append(a.slot.started_at - a.received_at))
        # One future wakes us: the call ended, its stop was asked, or its time is up. (Cheaper
        # than asyncio.wait over the call and a stop event: no task per call.)
        wake = a.wake = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: _wake(wake))
        late = asyncio.get_running_loop().call_later(timeout, _wake, wake) if timeout else None
        try:
            await wake
        finally:
            if late is not None:
                late.cancel()
        if future.done() and not a.stop_asked:
            return future.result()
        timed_out = not a.stop_asked
        if timed_out:
            self._stop_attempt(a, wire.FAIL_TIMEOUT)
        # Give the code a moment to notice; then report whether or not it did.
        done, _ = await asyncio.wait({future}, timeout=min(5.0, self.config.lease_s / 3))
        if not done:
            self._hold_slot(a, future)
            raise interrupt.AttemptInterrupted(wire.FAIL_TIMEOUT if timed_out else wire.FAIL_CANCELLED)
        if timed_out:
            raise interrupt.AttemptInterrupted(wire.FAIL_TIMEOUT)
        return future.result()  # (a cancel: it stopped, or it ended first)

    def _hold_slot(self, a: _Attempt, future: asyncio.Future[Any]) -> None:
        """The thread did not stop (code blocked in C, or catching the interrupt): keep its slot
        taken until it ends, and say so in `stats`: the pool manager replaces an agent with such a
        slot, and only the end of the process ends the call."""
        a.stuck = future
        self.stuck += 1
        log.warning("agent.attempt_ignores_stop", agent=self.name, **_context(a.ident), stuck=self.stuck)

        def ended(_: Any) -> None:
            self.stuck -= 1
            self._release_slot()

        future.add_done_callback(ended)
        if self.stuck >= self.config.slots:  # (the pool manager replaces us at its next heartbeat)
            log.error("agent.slots_stuck", agent=self.name, stuck=self.stuck)

    def _check_result(self, output: Any) -> None:
        try:
            encoded = json.dumps(output, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise loading.Rejected(
                f"result of type {type(output).__name__} is not JSON-serialisable ({exc}); "
                "return plain dicts, lists, strings, numbers, booleans or None"
            ) from None
        if "\\u0000" in encoded and _NUL_ESCAPE.search(encoded):
            raise loading.Rejected(
                "result contains a NUL character (\\u0000), which Postgres cannot store; "
                "encode binary data (base64) or strip it"
            )
        if len(encoded) > self.config.max_result_bytes:
            raise loading.Rejected(
                f"result is {len(encoded):,} bytes, over the {self.config.max_result_bytes:,}-byte limit; "
                "store large data elsewhere (object storage, a table) and return a reference to it"
            )

    def _stop_attempt(self, a: _Attempt, reason: str) -> None:
        a.stop_asked = True
        if a.wake is not None:
            _wake(a.wake)
        ctx = getattr(a, "ctx", None)
        if ctx is not None:
            ctx.cancelled.set()
        if not a.slot.interrupt(reason) and not a.sync and a.task is not None and not a.task.done():
            # Async code (or not started yet): cancel the coroutine. (A sync call that is not
            # in its thread has not started, and will not, or has just ended: `_call` sees it.)
            a.task.cancel()

    # ---- deliveries, leases, reclaim, cancels -----------------------------------------------

    def _done(self, partition: int, entry_id: bytes) -> None:
        for ident, a in list(self._inflight.items()):
            if a.entry_id == entry_id and a.partition == partition:
                del self._inflight[ident]
                self.completed += 1
                if a.stuck is None:
                    self._release_slot()
                return

    def _release_slot(self) -> None:
        self.free += 1
        while self._waiting and self.free > 0:
            self._start(self._waiting.popleft())
        if self.free > 0:
            self._has_free.set()

    async def _keep_leases(self) -> None:
        """Renew the lease of every running attempt (XCLAIM JUSTID resets idle time without
        counting a delivery), so long tasks are not taken over while their agent is alive."""
        assert self.client is not None
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            by_partition: dict[int, list[bytes]] = {}
            for a in list(self._inflight.values()):
                by_partition.setdefault(a.partition, []).append(a.entry_id)
            try:
                for partition, ids in by_partition.items():
                    await self.client.xclaim(
                        keys.pool_stream(partition, self.config.pool), keys.AGENT_GROUP, self.name,
                        min_idle_time=0, message_ids=ids, justid=True,
                    )
            except (rexc.ConnectionError, rexc.TimeoutError, rexc.ResponseError) as exc:
                reraise_cancel()  # redis-py may turn a cancel into a ConnectionError
                log.warning("agent.lease_renewal_failed", agent=self.name, error=str(exc))

    async def _reclaim_loop(self) -> None:
        assert self.client is not None
        lease_ms = int(self.config.lease_s * 1000)
        while True:
            for p in range(self.config.partitions):
                if self.free <= 0:
                    break
                try:
                    entries = await self._reclaim(
                        keys=[keys.pool_stream(p, self.config.pool), keys.dead_letter(p, self.config.pool),
                              keys.events(p), keys.reclaim_counts(p)],
                        args=[keys.AGENT_GROUP, self.name, lease_ms, self.free, self.config.max_deliveries, 10_000,
                              self.config.pool],
                    )
                except (rexc.ConnectionError, rexc.TimeoutError, rexc.ResponseError) as exc:
                    reraise_cancel()  # redis-py may turn a cancel into a ConnectionError
                    log.warning("agent.reclaim_failed", agent=self.name, error=str(exc))
                    continue
                for entry_id, flat in entries:
                    fields = dict(zip(flat[::2], flat[1::2]))
                    self._begin(p, entry_id, fields)
                    a = next((x for x in self._inflight.values() if x.entry_id == entry_id and x.partition == p), None)
                    log.info("agent.reclaimed", agent=self.name, pool=self.config.pool, entry=entry_id,
                             **(_context(a.ident) if a is not None else {}))
            await asyncio.sleep(self.config.lease_s / 2)

    async def _listen_cancels(self) -> None:
        """Stop attempts the coordinator cancels. A Redis blip resubscribes; signals missed
        meanwhile are covered by the coordinator's cancel grace timer."""
        while True:
            try:
                await self._listen_cancels_once()
            except (rexc.ConnectionError, rexc.TimeoutError) as exc:
                reraise_cancel()  # redis-py may turn a cancel into a ConnectionError
                log.warning("agent.cancel_listener_reconnecting", agent=self.name, error=str(exc))
                await asyncio.sleep(1)

    async def _listen_cancels_once(self) -> None:
        assert self.client is not None
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(keys.CANCEL_CHANNEL)
            while True:
                reraise_cancel()  # a cancel redis-py swallowed inside get_message still ends us
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is None:
                    continue
                try:
                    idents = [tuple(x) for x in msgpack.unpackb(msg["data"], raw=False)]
                except Exception:
                    log.warning("agent.unreadable_cancel", agent=self.name)
                    continue
                for ident in idents:
                    self._cancelled[ident] = None  # type: ignore[index]
                    while len(self._cancelled) > 10_000:
                        self._cancelled.popitem(last=False)
                    a = self._inflight.get(ident)  # type: ignore[arg-type]
                    if a is not None:
                        log.info("agent.cancelling", agent=self.name, **_context(a.ident))
                        self._stop_attempt(a, wire.FAIL_CANCELLED)
        finally:
            try:
                await pubsub.aclose()
            except (rexc.ConnectionError, rexc.TimeoutError):
                pass


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _context(ident: tuple[str, str, int]) -> dict[str, Any]:
    """An attempt's run, task and attempt number, for a log line about it."""
    return {"run": ident[0], "task": ident[1], "attempt": ident[2]}


def _interrupt_message(reason: str, env: dict[str, Any]) -> str:
    if reason == wire.FAIL_TIMEOUT:
        return f"timed out after {env.get('timeout')}s (timeout_seconds)"
    return "cancelled while running"


def _pack_result(event: dict[str, Any]) -> bytes:
    error = event.get("error")
    if isinstance(error, str):
        event["error"] = clean(error)[-_MAX_ERROR:]
    try:
        return wire.pack(wire.ATTEMPT_FINISHED, **event)
    except (TypeError, ValueError) as exc:  # an output (or log line) msgpack cannot carry
        logs = [[t, s, clean(line)] for t, s, line in event.get("logs") or ()]
        event.update(ok=False, output=None, retryable=False, reason=wire.FAIL_REJECTED, logs=logs,
                     error=f"result cannot be encoded: {exc}")
        return wire.pack(wire.ATTEMPT_FINISHED, **event)

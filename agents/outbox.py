"""What an agent sends to Redis: started events, chunks of output lines, and results with the
acknowledgement of their dispatch entries. Whatever is waiting goes in one round trip, in the
order it was put, results last: an attempt's lines are in its run's live log before its result
can end the run. A result and its acknowledgement are one Lua script (`finish.lua`); a chunk of
lines is numbered and appended to the run's live log and the ingest stream by another
(`log_append.lua`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import redis.asyncio as aioredis
import redis.exceptions as rexc
import structlog

from flowforge import keys

log = structlog.get_logger("flowforge.agent")
_LUA = Path(__file__).parent / "lua"
# A run's line counter outlives its live stream by far: a run that prints again after a long
# silence must go on numbering where it was, not restart at 1.
_COUNTER_TTL_MS = 30 * 86_400_000


@dataclass(frozen=True)
class LogSettings:
    chunk_lines: int = 1000  # lines per chunk, at most
    live_entries: int = 10_000  # chunks a run's live stream keeps (approximately)
    live_ttl_s: float = 86_400.0  # how long it stays after its last line


@dataclass(frozen=True)
class _Lines:
    tenant: str
    run: str
    n: int
    payload: bytes  # msgpack: {"task", "attempt", "lines": [[unix time, stream, text], ...]}


# (partition, dispatch entry id or None, envelope (b"": acknowledge only) or lines)
_Item = tuple[int, bytes | None, "bytes | _Lines"]


class Outbox:
    def __init__(self, client: aioredis.Redis, pool: str, logs: LogSettings, *, agent: str) -> None:
        self.client = client
        self.pool = pool
        self.logs = logs
        self.agent = agent
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._sources = {name: (_LUA / f"{name}.lua").read_text() for name in ("finish", "log_append")}
        self._shas: dict[str, str] = {}

    async def load_scripts(self) -> None:
        for name, source in self._sources.items():
            self._shas[name] = await self.client.script_load(source)

    def empty(self) -> bool:
        return self._queue.empty()

    # ---- what to send --------------------------------------------------------------------

    def event(self, partition: int, envelope: bytes) -> None:
        self._queue.put_nowait((partition, None, envelope))

    def result(self, partition: int, entry_id: bytes, envelope: bytes) -> None:
        self._queue.put_nowait((partition, entry_id, envelope))

    def acknowledge(self, partition: int, entry_id: bytes) -> None:
        """Acknowledge an entry away without a result (it could not even be read)."""
        self._queue.put_nowait((partition, entry_id, b""))

    def lines(self, partition: int, env: dict[str, Any], lines: list[list[Any]]) -> None:
        """An attempt's output lines, in chunks, for its run's live log."""
        step = self.logs.chunk_lines
        for i in range(0, len(lines), step):
            part = [[t, stream, clean(text)] for t, stream, text in lines[i:i + step]]
            payload = msgpack.packb({"task": env["task"], "attempt": env["attempt"], "lines": part})
            self._queue.put_nowait((partition, None, _Lines(env.get("tenant") or "", env["run"], len(part), payload)))

    # ---- sending -------------------------------------------------------------------------

    async def run(self, delivered: Callable[[int, bytes], None]) -> None:
        """Send forever; `delivered(partition, entry_id)` once an entry is acknowledged."""
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            while True:
                try:
                    await self._flush(items)
                    break
                except rexc.NoScriptError:  # Redis restarted or flushed its scripts
                    await self.load_scripts()
                except (rexc.ConnectionError, rexc.TimeoutError) as exc:
                    reraise_cancel()  # redis-py may turn a cancel into a ConnectionError
                    log.warning("agent.publish_retry", agent=self.agent, error=str(exc))
                    await asyncio.sleep(0.5)
            for partition, entry_id, _payload in items:
                if entry_id is not None:
                    delivered(partition, entry_id)

    async def _flush(self, items: list[_Item]) -> None:
        finished: dict[int, list[bytes]] = {}
        live_ttl_ms = int(self.logs.live_ttl_s * 1000)
        async with self.client.pipeline(transaction=False) as pipe:
            for partition, entry_id, payload in items:
                if isinstance(payload, _Lines):
                    pipe.evalsha(self._shas["log_append"], 3, keys.run_log(partition, payload.run),
                                 keys.run_log_count(partition, payload.run), keys.log_ingest(partition),
                                 payload.n, payload.payload, payload.run, payload.tenant,
                                 self.logs.live_entries, live_ttl_ms, max(live_ttl_ms, _COUNTER_TTL_MS))
                elif entry_id is None:
                    pipe.xadd(keys.events(partition), {keys.ENTRY_FIELD: payload})
                elif payload:
                    finished.setdefault(partition, []).extend((entry_id, payload))
                else:
                    pipe.xack(keys.pool_stream(partition, self.pool), keys.AGENT_GROUP, entry_id)
            for partition, pairs in finished.items():
                stream = keys.pool_stream(partition, self.pool)
                pipe.evalsha(self._shas["finish"], 2, stream, keys.events(partition), keys.AGENT_GROUP, *pairs)
            await pipe.execute()


def reraise_cancel() -> None:
    """If this task is being cancelled (the agent is stopping), stop now. redis-py can turn a
    cancel into a ConnectionError, or swallow it, and a loop that retries would then hold up
    the shutdown forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def clean(text: str) -> str:
    """Text Postgres and msgpack accept: no NUL, no lone surrogates."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")

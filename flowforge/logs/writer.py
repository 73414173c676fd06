"""The log writer: persists the chunks agents append to each partition's ingest stream into
the LogStore, in batches, and acknowledges (and deletes) them only once they are stored. A
crash in between re-reads them; the store keeps each line once (idempotent on run and pos)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import msgpack
import redis.asyncio as aioredis
import redis.exceptions as rexc
import structlog

from flowforge import errors, keys
from flowforge.backends.redis_streams import ensure_group
from flowforge.logs.model import LogLine, LogStore

log = structlog.get_logger("flowforge.logs")


def decode_chunk(first: int, payload: bytes, run_id: str, tenant: str) -> list[LogLine]:
    """The lines of one chunk, numbered from `first`."""
    body: dict[str, Any] = msgpack.unpackb(payload)
    task, attempt = str(body["task"]), int(body["attempt"])
    return [
        LogLine(tenant, run_id, first + i, task, attempt, float(ts), str(stream), str(text))
        for i, (ts, stream, text) in enumerate(body["lines"])
    ]


class LogWriter:
    def __init__(self, client: aioredis.Redis, store: LogStore, partitions: Sequence[int], *,
                 consumer: str = "writer", batch_entries: int = 500, block_ms: int = 200) -> None:
        self.client = client
        self.store = store
        self.partitions = tuple(partitions)
        self.consumer = consumer
        self.batch_entries = batch_entries
        self.block_ms = block_ms
        self.written = 0  # lines stored, for metrics and benchmarks
        self.lag_s = 0.0  # age of the newest chunk at its write: how far behind the live log we are
        self._stopping = asyncio.Event()
        self._backlog_read: set[int] = set()

    def stop(self) -> None:
        self._stopping.set()

    async def run_forever(self) -> None:
        for p in self.partitions:
            await ensure_group(self.client, keys.log_ingest(p), keys.LOG_GROUP)
        while not self._stopping.is_set():
            try:
                await self.once()
            except (rexc.ConnectionError, rexc.TimeoutError, errors.TemporaryError) as exc:
                log.warning("logs.writer_unavailable", error=str(exc))
                self._backlog_read.clear()  # re-read what we were given and did not store
                await asyncio.sleep(1.0)
            except rexc.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                for p in self.partitions:  # Redis lost the stream: recreate it
                    await ensure_group(self.client, keys.log_ingest(p), keys.LOG_GROUP)

    async def once(self) -> int:
        """Read a batch of chunks (after a restart: first those we were given but never
        acknowledged), store their lines, acknowledge them. Returns the lines stored."""
        streams = {keys.log_ingest(p): (">" if p in self._backlog_read else "0") for p in self.partitions}
        backlog = any(v == "0" for v in streams.values())
        reply = await self.client.xreadgroup(keys.LOG_GROUP, self.consumer, streams, count=self.batch_entries,
                                             block=None if backlog else self.block_ms)
        lines: list[LogLine] = []
        done: dict[str, list[bytes]] = {}
        newest = 0.0
        for stream, entries in reply or ():
            stream = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in entries:
                done.setdefault(stream, []).append(entry_id)
                if not fields:
                    continue  # deleted while pending
                try:
                    lines += decode_chunk(int(fields[b"p"]), fields[b"d"], fields[b"r"].decode(),
                                          fields[b"t"].decode())
                except (KeyError, ValueError, TypeError, msgpack.UnpackException) as exc:
                    log.error("logs.unreadable_chunk", stream=stream, entry=entry_id, error=repr(exc))
                newest = max(newest, int(entry_id.split(b"-")[0]) / 1000)
        if backlog:
            got = {s.decode() if isinstance(s, bytes) else s for s, entries in (reply or ()) if entries}
            self._backlog_read |= {p for p in self.partitions if keys.log_ingest(p) not in got}
            if not got:
                return await self.once()  # nothing left over: read what is new
        if lines:
            await self.store.write(lines)
            self.written += len(lines)
            self.lag_s = max(0.0, time.time() - newest)
        if done:
            async with self.client.pipeline(transaction=False) as pipe:
                for stream, ids in done.items():
                    pipe.xack(stream, keys.LOG_GROUP, *ids)
                    pipe.xdel(stream, *ids)
                await pipe.execute()
        return len(lines)

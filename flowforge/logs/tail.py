"""Reading a run's output: stored lines first, then the live stream, with no gap and no
duplicate at the seam.

Lines are numbered per run (`pos`, from 1) when they reach the run's live stream, and the log
writer stores them in that order, one partition's chunks at a time: so the store holds every
line up to its highest pos (its watermark), and the live stream holds the newest lines. A
reader takes lines up to the watermark from the store and the rest from the live stream; if
the live stream was trimmed past lines the store does not have yet, it waits for the writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions as rexc

from flowforge import errors, keys
from flowforge.logs.model import Filter, LogLine, LogStore
from flowforge.logs.writer import decode_chunk

_PAGE = 1000


@dataclass(frozen=True)
class _Entry:
    entry_id: bytes
    lines: list[LogLine]

    @property
    def first(self) -> int:
        return self.lines[0].pos if self.lines else 0


class LogTail:
    def __init__(self, client: aioredis.Redis, store: LogStore, partitions: int, *, poll_s: float = 1.0) -> None:
        self.client = client
        self.store = store
        self.partitions = partitions
        self.poll_s = poll_s

    # ---- one page ------------------------------------------------------------------------

    async def page(self, tenant: str, run_id: str, *, after: int, limit: int,
                   keep: Filter = Filter()) -> tuple[list[LogLine], int]:
        """Up to `limit` lines after `after` (matching `keep`), and the cursor to ask from next:
        the last line's pos, or further when lines that did not match were passed over."""
        out: list[LogLine] = []
        cursor = after
        stored_to = await self._watermark(tenant, run_id)
        while cursor < stored_to and len(out) < limit:
            got = [line for line in await self._stored(tenant, run_id, cursor, keep) if line.pos <= stored_to]
            for line in got[: limit - len(out)]:
                out.append(line)
                cursor = line.pos
            if len(got) < _PAGE and len(out) < limit:
                cursor = stored_to  # every matching line up to the watermark is in `out`
        entries = await self._live_from(tenant, run_id, cursor)
        if entries and entries[0].first > cursor + 1:
            return out, cursor  # lines trimmed from the live stream, not stored yet: ask again
        for entry in entries:
            for line in entry.lines:
                if line.pos <= cursor:
                    continue
                if keep(line):
                    if len(out) == limit:
                        return out, cursor
                    out.append(line)
                cursor = line.pos
        return out, cursor

    # ---- follow --------------------------------------------------------------------------

    async def follow(self, tenant: str, run_id: str, *, after: int, keep: Filter,
                     ended: Callable[[], Awaitable[bool]]) -> AsyncIterator[LogLine]:
        """Every line after `after` (matching `keep`), in order, as it arrives, until the run
        has ended and its last line was given."""
        cursor = after
        key = keys.run_log(keys.partition_of(run_id, self.partitions), run_id)
        while True:
            stored_to = await self._watermark(tenant, run_id)
            while cursor < stored_to:  # the store, up to its watermark
                got = await self._stored(tenant, run_id, cursor, keep)
                for line in got:
                    if line.pos <= stored_to:
                        yield line
                cursor = got[-1].pos if len(got) == _PAGE and got[-1].pos < stored_to else stored_to
            entries = await self._live_from(tenant, run_id, cursor)
            if entries and entries[0].first > cursor + 1:
                await asyncio.sleep(0.1)  # trimmed from the live stream before it was stored
                continue
            last_id = b"0-0"
            while True:  # the live stream, then whatever is appended to it
                if entries and entries[0].first > cursor + 1:
                    break  # we fell behind its trimming: catch up from the store
                for entry in entries:
                    for line in entry.lines:
                        if line.pos > cursor:
                            if keep(line):
                                yield line
                            cursor = line.pos
                    last_id = entry.entry_id
                entries = await self._read_after(tenant, run_id, key, last_id)
                if entries:
                    continue
                if await ended():
                    entries = await self._read_after(tenant, run_id, key, last_id, block=False)
                    if entries:
                        continue
                    if cursor >= await self._counter(run_id):
                        return
                    break  # lines we have not seen are only in the store by now

    async def _stored(self, tenant: str, run_id: str, cursor: int, keep: Filter) -> list[LogLine]:
        return await self.store.read(tenant, run_id, after=cursor, limit=_PAGE, task=keep.task, attempt=keep.attempt)

    # ---- Redis ---------------------------------------------------------------------------

    async def _watermark(self, tenant: str, run_id: str) -> int:
        """Every line of the run up to this pos is in the store (those not yet purged)."""
        return await self.store.last_pos(tenant, run_id)

    async def _counter(self, run_id: str) -> int:
        """How many lines the run has printed so far (0: none, or forgotten)."""
        part = keys.partition_of(run_id, self.partitions)
        value = await self._redis(self.client.get(keys.run_log_count(part, run_id)))
        return int(value or 0)

    async def _live_from(self, tenant: str, run_id: str, cursor: int) -> list[_Entry]:
        """The live stream's entries from the one holding line `cursor + 1` (or its oldest)."""
        key = keys.run_log(keys.partition_of(run_id, self.partitions), run_id)
        found: list[_Entry] = []
        upper = b"+"
        while True:  # newest first, back to the entry holding the next line
            batch = await self._redis(self.client.xrevrange(key, max=upper, count=50))
            if not batch:
                break
            done = False
            for entry_id, fields in batch:
                entry = _decode(entry_id, fields, run_id, tenant)
                if entry is None:
                    continue
                found.append(entry)
                if entry.first <= cursor + 1:
                    done = True
                    break
            if done or len(batch) < 50:
                break
            upper = b"(" + batch[-1][0]
        found.reverse()
        return found

    async def _read_after(self, tenant: str, run_id: str, key: str, last_id: bytes, *,
                          block: bool = True) -> list[_Entry]:
        reply = await self._redis(self.client.xread({key: last_id}, count=100,
                                                    block=int(self.poll_s * 1000) if block else None))
        out = []
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                entry = _decode(entry_id, fields, run_id, tenant)
                if entry is not None:
                    out.append(entry)
        return out

    @staticmethod
    async def _redis(call: Awaitable):  # type: ignore[type-arg]
        try:
            return await call
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise errors.TemporaryError(f"redis: {exc}") from None


def _decode(entry_id: bytes, fields: dict[bytes, bytes] | None, run_id: str, tenant: str) -> _Entry | None:
    try:
        return _Entry(entry_id, decode_chunk(int(fields[b"p"]), fields[b"d"], run_id, tenant))  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None

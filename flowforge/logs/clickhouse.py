"""The ClickHouse LogStore: one MergeTree table, partitioned by day, sorted to read a run's lines,
and expired by a TTL of `retention_days` (so `purge` deletes nothing). The same DDL and SQL run
on a ClickHouse server or on chDB in this process (`clickhouse_exec`).

MergeTree does not deduplicate: a re-sent batch is stored twice and reads keep one line per pos
(`LIMIT 1 BY pos`). A skip index on pos lets "lines after N" skip the run's older granules."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from flowforge.domain import ids
from flowforge.logs import clickhouse_exec, model

T = TypeVar("T")
TABLE = "log_lines"
COLUMNS = ("tenant_id", "run_id", "pos", "task_key", "attempt", "ts", "stream", "line")


def ttl_clause(days: int) -> str:
    return f"TTL toDateTime(ts) + INTERVAL {int(days)} DAY"


def create_table(days: int) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    tenant_id LowCardinality(String),
    run_id UUID,
    pos UInt64,
    task_key String,
    attempt UInt32,
    ts DateTime64(6, 'UTC'),
    stream LowCardinality(String),
    line String CODEC(ZSTD(1)),
    INDEX pos_minmax pos TYPE minmax GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (tenant_id, run_id, task_key, attempt, ts)
{ttl_clause(days)}"""


_ENGINE = f"SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = '{TABLE}'"
_SELECT = f"""
SELECT pos, task_key, attempt, toUnixTimestamp64Micro(ts), stream, line FROM {TABLE}
WHERE tenant_id = {{tenant:String}} AND run_id = {{run:UUID}} AND pos > {{after:UInt64}}"""
_READ_TAIL = "\nORDER BY pos LIMIT 1 BY pos LIMIT {limit:UInt64}"
_LAST_POS = f"SELECT max(pos) FROM {TABLE} WHERE tenant_id = {{tenant:String}} AND run_id = {{run:UUID}}"
_UTC = timezone.utc


def _when(ts: float) -> str:
    """DateTime64 text: "seconds.micros" is read as unix time when it has 10 digits before the
    point (2001 to 2286); a shorter number may be read as a date (20240101), so those go as
    date and time (slower to format)."""
    if 1e9 <= ts < 1e10:
        return f"{ts:.6f}"
    return str(datetime.fromtimestamp(ts, _UTC).replace(tzinfo=None))


def _storable(text: str) -> str:
    """As the Postgres store keeps it: no NUL, no lone surrogate (agents already clean theirs)."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _body(lines: Sequence[model.LogLine], clean: bool = False) -> str:
    fix: Callable[[str], str] = _storable if clean else (lambda s: s)
    rows = [[fix(x.tenant), x.run_id, x.pos, fix(x.task), x.attempt, _when(x.ts), fix(x.stream), fix(x.line)]
            for x in lines]
    return json.dumps(rows, ensure_ascii=False)[1:-1]  # rows separated by commas: JSONCompactEachRow reads them


class ClickHouseLogStore:
    """Implements model.LogStore; `open_executor` is called on the store's own thread at start."""

    def __init__(self, open_executor: Callable[[], clickhouse_exec.Executor], *, retention_days: int,
                 threads: int = 1) -> None:
        self._open = open_executor
        self.retention_days = retention_days
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ff-logs-clickhouse")
        self._executor: clickhouse_exec.Executor | None = None

    @classmethod
    def embedded(cls, path: Path, *, retention_days: int) -> ClickHouseLogStore:
        """chDB with its data under `path` (one chDB directory per process)."""
        return cls(lambda: clickhouse_exec.ChdbExecutor(path), retention_days=retention_days,
                   threads=clickhouse_exec.ChdbExecutor.threads)

    @classmethod
    def server(cls, url: str, *, retention_days: int) -> ClickHouseLogStore:
        """A ClickHouse server at `url` (clickhouse://user:password@host:8123/database)."""
        clickhouse_exec.parse_url(url)  # a malformed URL fails here, not at start
        return cls(lambda: clickhouse_exec.ServerExecutor.connect(url), retention_days=retention_days,
                   threads=clickhouse_exec.ServerExecutor.threads)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @property
    def _ex(self) -> clickhouse_exec.Executor:
        if self._executor is None:
            raise RuntimeError("ClickHouseLogStore used before start()")
        return self._executor

    async def start(self) -> None:
        """Create the table if missing, and bring its TTL to `retention_days` if that changed."""
        if self._executor is None:
            self._executor = await self._run(self._open)
        await self._run(self._ex.command, create_table(self.retention_days))
        engine = await self._run(self._ex.rows, _ENGINE)
        if engine and not re.search(rf"\+ toIntervalDay\({int(self.retention_days)}\)", engine[0][0]):
            await self._run(self._ex.command, f"ALTER TABLE {TABLE} MODIFY {ttl_clause(self.retention_days)}")

    async def write(self, lines: Sequence[model.LogLine]) -> None:
        if not lines:
            return
        body = _body(lines, clean=any("\x00" in x.line for x in lines))
        if not body.isascii():
            try:
                body.encode()
            except UnicodeEncodeError:  # a lone surrogate: neither ClickHouse nor UTF-8 holds one
                body = _body(lines, clean=True)
        await self._run(self._ex.insert, TABLE, COLUMNS, body)

    async def read(self, tenant: str, run_id: str, *, after: int = 0, limit: int = 1000,
                   task: str | None = None, attempt: int | None = None) -> list[model.LogLine]:
        if limit <= 0 or not ids.is_uuid(run_id) or (attempt is not None and attempt < 0):
            return []
        sql, params = _SELECT, {"tenant": tenant, "run": run_id, "after": max(after, 0), "limit": limit}
        if task is not None:
            sql, params["task"] = sql + " AND task_key = {task:String}", task
        if attempt is not None:
            sql, params["attempt"] = sql + " AND attempt = {attempt:UInt32}", attempt
        rows = await self._run(self._ex.rows, sql + _READ_TAIL, params)
        return [model.LogLine(tenant, run_id, int(r[0]), r[1], int(r[2]), int(r[3]) / 1e6, r[4], r[5])
                for r in rows]

    async def last_pos(self, tenant: str, run_id: str) -> int:
        if not ids.is_uuid(run_id):
            return 0
        rows = await self._run(self._ex.rows, _LAST_POS, {"tenant": tenant, "run": run_id})
        return int(rows[0][0]) if rows else 0

    async def purge(self, older_than: float, batch: int = 10_000) -> int:
        return 0  # the table's TTL expires lines in ClickHouse's own merges

    async def close(self) -> None:
        if self._executor is not None:
            await self._run(self._executor.close)
            self._executor = None
        self._pool.shutdown(wait=True)

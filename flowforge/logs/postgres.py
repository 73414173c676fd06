"""The Postgres LogStore: table `log_lines` (migration 0011), keyed by (run_id, pos).

A batch is one statement: an `INSERT ... SELECT FROM unnest(...)` of one array per column,
`ON CONFLICT DO NOTHING`, so a re-sent batch stores nothing twice. (Measured against COPY into
a temporary table and `json_to_recordset`: as fast or faster for new lines, faster for a re-sent
batch, and one statement instead of three.) Reads go through the primary key; retention deletes
by age, a bounded batch per statement."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from flowforge.backends.postgres import faults, migrate, store as pg_store
from flowforge.domain import ids
from flowforge.logs import model

_INSERT = """
INSERT INTO log_lines (tenant_id, run_id, pos, task_key, attempt, ts, stream, line)
SELECT t, r, p, k, a, to_timestamp(s), st, l
FROM unnest(%s::text[], %s::uuid[], %s::int8[], %s::text[], %s::int4[], %s::float8[], %s::text[],
            %s::text[]) AS u(t, r, p, k, a, s, st, l)
ON CONFLICT (run_id, pos) DO NOTHING"""
_READ = """
SELECT pos, task_key, attempt, extract(epoch FROM ts)::float8, stream, line FROM log_lines
WHERE run_id = %(run)s AND tenant_id = %(tenant)s AND pos > %(after)s
  AND (%(task)s::text IS NULL OR task_key = %(task)s)
  AND (%(attempt)s::int IS NULL OR attempt = %(attempt)s)
ORDER BY pos LIMIT %(limit)s"""
_LAST_POS = "SELECT coalesce(max(pos), 0) FROM log_lines WHERE run_id = %s AND tenant_id = %s"
# By ctid: a bounded batch per statement (short locks, small WAL bursts), found through the BRIN
# index on ts; the outer condition re-checks age in case a ctid was reused meanwhile.
_PURGE = """
DELETE FROM log_lines WHERE ctid = ANY(ARRAY(
  SELECT ctid FROM log_lines WHERE ts < to_timestamp(%(before)s) LIMIT %(batch)s))
  AND ts < to_timestamp(%(before)s)"""


def _storable(text: str) -> str:
    """Text Postgres accepts: no NUL, no lone surrogate (agents already clean theirs)."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _texts(values: list[str]) -> str:
    """A text[] literal. Built here because psycopg adapts a list element by element in Python,
    which took more time than the insert itself; every element is quoted and escaped."""
    return "{" + ",".join(['"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]) + "}"


def _numbers(values: list[int] | list[float]) -> str:
    return "{" + ",".join(map(repr, values)) + "}"  # repr: a float's exact, round-tripping digits


def _arrays(lines: Sequence[model.LogLine], clean: bool) -> tuple[str, ...]:
    fix = _storable if clean else (lambda s: s)
    return (
        _texts([fix(x.tenant) for x in lines]), _texts([x.run_id for x in lines]),
        _numbers([int(x.pos) for x in lines]), _texts([fix(x.task) for x in lines]),
        _numbers([int(x.attempt) for x in lines]), _numbers([float(x.ts) for x in lines]),
        _texts([fix(x.stream) for x in lines]), _texts([fix(x.line) for x in lines]),
    )


@faults.translated
class PostgresLogStore:
    """Implements model.LogStore on the project's Postgres."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    def connect(cls, url: str, *, pool_size: int = 2) -> PostgresLogStore:
        return cls(pg_store.open_engine(url, pool_size))

    async def start(self) -> None:
        """Migrate the schema to the latest revision if `log_lines` is missing (the stack
        migrates at start-up; a store used on its own, e.g. by the benchmark, may come first)."""
        async with self.engine.connect() as conn:
            present = (await conn.exec_driver_sql("SELECT to_regclass('log_lines') IS NOT NULL")).scalar_one()
        if not present:
            await asyncio.to_thread(migrate.upgrade, self.engine.url.render_as_string(hide_password=False))

    async def write(self, lines: Sequence[model.LogLine]) -> None:
        if not lines:
            return
        clean = any("\x00" in x.line for x in lines)
        async with self.engine.begin() as conn:
            try:
                await conn.exec_driver_sql(_INSERT, _arrays(lines, clean))
            except UnicodeEncodeError:  # a lone surrogate, found before anything was sent
                await conn.exec_driver_sql(_INSERT, _arrays(lines, clean=True))

    async def read(self, tenant: str, run_id: str, *, after: int = 0, limit: int = 1000,
                   task: str | None = None, attempt: int | None = None) -> list[model.LogLine]:
        if limit <= 0 or not ids.is_uuid(run_id):
            return []
        params = {"run": run_id, "tenant": tenant, "after": after, "limit": limit, "task": task,
                  "attempt": attempt}
        async with self.engine.connect() as conn:
            rows = (await conn.exec_driver_sql(_READ, params)).all()
        return [model.LogLine(tenant, run_id, int(r[0]), r[1], int(r[2]), float(r[3]), r[4], r[5])
                for r in rows]

    async def last_pos(self, tenant: str, run_id: str) -> int:
        if not ids.is_uuid(run_id):
            return 0
        async with self.engine.connect() as conn:
            return int((await conn.exec_driver_sql(_LAST_POS, (run_id, tenant))).scalar_one())

    async def purge(self, older_than: float, batch: int = 10_000) -> int:
        async with self.engine.begin() as conn:
            result = await conn.exec_driver_sql(_PURGE, {"before": older_than, "batch": batch})
        return int(result.rowcount)

    async def close(self) -> None:
        await self.engine.dispose()

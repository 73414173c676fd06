"""State metrics, read when Prometheus scrapes: the depth of the pool streams, the agents the
pool manager keeps, the reclaim counters (from Redis) and the runs not finished yet (from
Postgres), for the partitions one coordinator owns. Each source gets one round trip and a
timeout; one that does not answer is reported down, not waited for."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rexc
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from flowforge import keys, metrics
from flowforge.backends.pools import STALE_AFTER_S

log = structlog.get_logger("flowforge.metrics")

# Served by the partial index runs_active_partition: only unfinished runs are read.
_ACTIVE_RUNS = sa.text(
    "SELECT tenant_id, status, count(*) FROM runs "
    "WHERE status IN ('pending', 'running') AND partition = ANY(:parts) GROUP BY tenant_id, status"
)


class StateReader:
    """A `metrics.Reader`. `agents`: also report the pool manager's view of the agents (the
    coordinator that runs the pool manager does)."""

    def __init__(self, client: aioredis.Redis, engine: AsyncEngine, partitions: Sequence[int],
                 pools: Sequence[str], *, agents: bool) -> None:
        self.client = client
        self.engine = engine
        self.partitions = list(partitions)
        self.pools = list(pools)
        self.agents = agents

    async def __call__(self, timeout_s: float) -> metrics.Reading:
        reading = metrics.Reading()
        redis_ok, pg_ok = await asyncio.gather(
            _within(self._redis(reading), timeout_s, "redis"), _within(self._postgres(reading), timeout_s, "postgres"),
        )
        reading.up = {"redis": redis_ok, "postgres": pg_ok}
        return reading

    async def _redis(self, reading: metrics.Reading) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for p in self.partitions:
                for pool in self.pools:
                    stream = keys.pool_stream(p, pool)
                    pipe.xlen(stream)
                    pipe.xpending(stream, keys.AGENT_GROUP)
                    pipe.xlen(keys.dead_letter(p, pool))
                pipe.hgetall(keys.reclaim_counts(p))
            if self.agents:
                pipe.hgetall(keys.POOL_STATUS)
            replies = iter(await pipe.execute(raise_on_error=False))
        streams: dict[str, list[int]] = {pool: [0, 0, 0] for pool in self.pools}
        reading.reclaimed = dict.fromkeys(self.pools, 0)  # every pool has a series, from 0
        reading.dead_lettered = dict.fromkeys(self.pools, 0)
        for _p in self.partitions:
            for pool in self.pools:
                length, pending, dead = next(replies), next(replies), next(replies)
                found = streams[pool]
                found[0] += _int(length)
                found[1] += _int(pending.get("pending") if isinstance(pending, dict) else 0)
                found[2] += _int(dead)
            counts = next(replies)
            for name, value in (counts.items() if isinstance(counts, dict) else ()):
                kind, _, pool = _text(name).partition(":")
                target = {"reclaimed": reading.reclaimed, "dead_lettered": reading.dead_lettered}.get(kind)
                if target is not None and pool:
                    target[pool] = target.get(pool, 0) + _int(value)
        reading.streams = {pool: (n, p, d) for pool, (n, p, d) in streams.items()}
        if self.agents:
            status = next(replies)
            reading.agents = _agents(status if isinstance(status, dict) else {})

    async def _postgres(self, reading: metrics.Reading) -> None:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(_ACTIVE_RUNS, {"parts": self.partitions})).all()
        reading.runs = {(tenant, status): int(n) for tenant, status, n in rows}


def _agents(status: dict[Any, Any]) -> dict[str, dict[str, int]]:
    """The pool manager's published view, pool -> state -> agents (a stale view: none ready)."""
    out = {}
    for name, text in status.items():
        try:
            view = json.loads(text)
        except ValueError:
            continue
        fresh = time.time() - float(view.get("at") or 0) < STALE_AFTER_S
        out[_text(name)] = {
            "desired": _int(view.get("desired")),
            "ready": _int(view.get("ready")) if fresh else 0,
            "busy": _int(view.get("busy_agents")) if fresh else 0,
            "starting": _int(view.get("starting")) if fresh else 0,
            "draining": _int(view.get("draining")) if fresh else 0,
        }
    return out


async def _within(read: Any, timeout_s: float, source: str) -> bool:
    try:
        await asyncio.wait_for(read, timeout_s)
        return True
    except (TimeoutError, OSError, rexc.RedisError, sa.exc.SQLAlchemyError) as exc:
        log.warning("metrics.source_unavailable", source=source, error=type(exc).__name__)
        return False


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

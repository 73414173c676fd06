"""What the API shows and changes of the agent pools: the pool manager's published view, the
pool streams' pending entries, and node annotations (through the node source)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rexc

from flowforge import errors, keys

STALE_AFTER_S = 30.0  # a view older than this: no pool manager is running


class PoolDirectory:
    def __init__(self, redis_url: str, pools: Mapping[str, Any], nodes: Any, partitions: int) -> None:
        """`pools`: name -> `agents.pools.PoolConfig`; `nodes`: an `agents.nodes.NodeSource`."""
        self.client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        self.pools = dict(pools)
        self.nodes = nodes
        self.partitions = partitions

    async def list(self) -> list[dict[str, Any]]:
        try:
            seen = await self.client.hgetall(keys.POOL_STATUS)
            pending = await self._pending(sorted(self.pools))
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise errors.TemporaryError(f"redis: {exc}") from None
        out = []
        for name, cfg in sorted(self.pools.items()):
            view = json.loads(seen[name]) if name in seen else None
            fresh = view is not None and time.time() - view.get("at", 0) < STALE_AFTER_S
            out.append({
                "name": name,
                "slots_per_agent": cfg.slots_per_agent,
                "min_agents": cfg.min_agents,
                "max_agents": cfg.max_agents,
                "node_selector": dict(cfg.node_selector),
                "managed": fresh,
                "desired": view["desired"] if fresh else None,
                "ready": view["ready"] if fresh else 0,
                "starting": view["starting"] if fresh else 0,
                "draining": view["draining"] if fresh else 0,
                "busy_agents": view["busy_agents"] if fresh else 0,
                "free_slots": view["free_slots"] if fresh else 0,
                "backlog": view["backlog"] if fresh else 0,
                "pending_entries": pending.get(name, 0),
                "node_groups": view["groups"] if fresh else {},
                "desired_by_group": view["desired_by_group"] if fresh else {},
                "nodes_seen_at": view.get("nodes_seen_at") if fresh else None,
            })
        return out

    async def _pending(self, pools: Sequence[str]) -> dict[str, int]:
        """Dispatch entries delivered to an agent and not yet acknowledged, per pool."""
        async with self.client.pipeline(transaction=False) as pipe:
            for pool in pools:
                for p in range(self.partitions):
                    pipe.xpending(keys.pool_stream(p, pool), keys.AGENT_GROUP)
            replies = await pipe.execute(raise_on_error=False)
        out: dict[str, int] = {}
        for i, pool in enumerate(pools):
            for reply in replies[i * self.partitions:(i + 1) * self.partitions]:
                if isinstance(reply, dict):  # an error (no stream or group yet) counts as none
                    out[pool] = out.get(pool, 0) + int(reply.get("pending") or 0)
        return out

    async def annotate(self, group: str, counts: Mapping[str, int]) -> list[str]:
        unknown = sorted(set(counts) - set(self.pools))
        if unknown:
            raise errors.InvalidInput(f"counts.{unknown[0]}", f"no pool named {unknown[0]!r}",
                                      f"use one of: {', '.join(sorted(self.pools))}")
        try:
            return await self.nodes.annotate(group, counts)
        except LookupError as exc:
            raise errors.NotFound(str(exc).strip("'\"")) from None
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise errors.TemporaryError(f"redis: {exc}") from None

    async def close(self) -> None:
        await self.client.aclose()
        await self.nodes.close()


class PublishedCapacity:
    """Pool capacity for a coordinator that does not run the pool manager (it does not own
    partition 0): the ready agents the manager last published, times their slots, refreshed
    every `refresh_s`."""

    def __init__(self, redis_url: str, slots: Mapping[str, int], *, refresh_s: float = 1.0) -> None:
        self.client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        self.slots = dict(slots)  # pool -> slots per agent
        self.refresh_s = refresh_s
        self._ready: dict[str, int] = {}
        self._task: Any = None

    def __call__(self, pool: str) -> int:
        return self._ready.get(pool, 0) * self.slots.get(pool, 0)

    async def refresh(self) -> None:
        seen = await self.client.hgetall(keys.POOL_STATUS)
        ready = {}
        for pool, text in seen.items():
            view = json.loads(text)
            ready[pool] = int(view.get("ready") or 0) if time.time() - view.get("at", 0) < STALE_AFTER_S else 0
        self._ready = ready

    async def start(self) -> None:
        await self.refresh()

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.refresh_s)
                try:
                    await self.refresh()
                except (rexc.ConnectionError, rexc.TimeoutError):
                    pass  # keep the last view; the next round tries again

        self._task = asyncio.create_task(loop(), name="pool capacity")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.client.aclose()

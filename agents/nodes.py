"""Where the pool manager learns about nodes: the `NodeSource` port, and its embedded
implementation (this machine as the one node of node group `local`). The Kubernetes one is
`agents.kubenodes`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Protocol

import redis.asyncio as aioredis

from agents import sizing
from flowforge import keys

LOCAL_GROUP = "local"


class NodeSource(Protocol):
    async def snapshot(self) -> list[sizing.Node]:
        """The nodes as they are now."""

    async def wait_changed(self, timeout: float) -> bool:
        """True as soon as a node was added, changed or removed since the last call; False
        after `timeout` seconds without a change."""

    async def annotate(self, group: str, counts: Mapping[str, int]) -> list[str]:
        """Set these pools' agent counts on every node of `group` (other pools' counts stay);
        return the nodes changed. LookupError for a group without nodes."""

    async def close(self) -> None: ...


class LocalNodes:
    """This machine as node `local` of node group `local`. Its `flowforge.io/agent-pools`
    annotation is kept in Redis, so any process (the API, the CLI through it) can change it
    and the pool manager sees the change within `poll_s`."""

    def __init__(self, redis_url: str, *, poll_s: float = 0.2) -> None:
        self.client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        self.poll_s = poll_s
        self._seen: str | None = None

    async def _annotation(self) -> str | None:
        return await self.client.get(keys.LOCAL_NODE_ANNOTATION)

    async def snapshot(self) -> list[sizing.Node]:
        text = await self._annotation()
        self._seen = text
        annotations = {sizing.ANNOTATION: text} if text is not None else {}
        return [sizing.Node(LOCAL_GROUP, {sizing.GROUP_LABEL: LOCAL_GROUP}, annotations)]

    async def wait_changed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if await self._annotation() != self._seen:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(self.poll_s, left))

    async def annotate(self, group: str, counts: Mapping[str, int]) -> list[str]:
        if group != LOCAL_GROUP:
            raise LookupError(f"no nodes in node group {group!r} (known groups: {LOCAL_GROUP})")
        async with self.client.pipeline(transaction=True) as pipe:  # read-modify-write, atomically
            while True:
                try:
                    await pipe.watch(keys.LOCAL_NODE_ANNOTATION)
                    text = await pipe.get(keys.LOCAL_NODE_ANNOTATION)
                    try:
                        merged = sizing.parse_annotation(text) if text else {}
                    except ValueError:
                        merged = {}
                    merged.update(counts)
                    pipe.multi()
                    pipe.set(keys.LOCAL_NODE_ANNOTATION, sizing.format_annotation(merged))
                    await pipe.execute()
                    return [LOCAL_GROUP]
                except aioredis.WatchError:
                    continue

    async def close(self) -> None:
        await self.client.aclose()

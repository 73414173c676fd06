"""The resident agent as a Ray actor, and the supervisor that keeps each pool's agents warm."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import ray
import structlog

from agents import pools as pooling
from agents import worker

log = structlog.get_logger("flowforge.pools")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _make_agent(config: dict[str, Any]) -> worker.Agent:
    return worker.Agent(worker.AgentConfig(**config))


# No `async def` in this class: Ray would then run every method on one event loop, and the
# blocking `serve` would starve `stats` and `stop`.
@ray.remote(num_cpus=0, max_restarts=0, max_concurrency=8)
class AgentActor:
    """One agent. Its loop runs on a thread of its own (uvloop where available), so the agent
    does not depend on how Ray schedules actor calls; `serve` returns when the loop ends."""

    def __init__(self, config: dict[str, Any]) -> None:
        config = dict(config)
        level = config.pop("log_level", "info")
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, str(level).upper(), logging.INFO)))
        self.loop = _new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ff-agent", daemon=True)
        self.thread.start()
        self.agent = self._call(_make_agent(config))

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def serve(self) -> None:
        self._call(self.agent.serve())

    def stop(self, drain_s: float = 10.0) -> None:
        self._call(self.agent.stop(drain_s), timeout=drain_s + 5)

    def stats(self) -> dict[str, Any]:
        return self.agent.stats()

    def pid(self) -> int:
        return os.getpid()


@dataclasses.dataclass
class _Member:
    pool: str
    index: int
    actor: Any
    watcher: asyncio.Task[None] | None = None


class PoolManager:
    """Starts `agents` warm agents per pool and replaces any that die."""

    def __init__(
        self,
        pools: Mapping[str, pooling.PoolConfig],
        *,
        redis_url: str,
        partitions: int,
        agent_defaults: Mapping[str, Any],
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        self.pools = dict(pools)
        self.redis_url = redis_url
        self.partitions = partitions
        self.agent_defaults = dict(agent_defaults)
        self.runtime_env = runtime_env
        self.members: dict[tuple[str, int], _Member] = {}
        self.restarts = 0
        self._stopping = False

    def capacity(self, pool: str) -> int:
        cfg = self.pools.get(pool)
        return cfg.capacity if cfg else 0

    def _config(self, pool: pooling.PoolConfig) -> dict[str, Any]:
        return dict(
            self.agent_defaults,
            pool=pool.name,
            redis_url=self.redis_url,
            partitions=self.partitions,
            slots=pool.slots_per_agent,
            allowed_functions=tuple(pool.allowed_functions),
            prewarm=tuple(pool.prewarm),
        )

    async def start(self) -> None:
        for pool in self.pools.values():
            for i in range(pool.agents):
                self._spawn(pool, i)
        # Agents are warm once their actor answers.
        await asyncio.gather(*(m.actor.stats.remote() for m in self.members.values()))
        log.info("pools.ready", agents=len(self.members), pools=sorted(self.pools))

    def _spawn(self, pool: pooling.PoolConfig, index: int) -> None:
        options: dict[str, Any] = {}
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        actor = AgentActor.options(**options).remote(self._config(pool))
        member = _Member(pool.name, index, actor)
        member.watcher = asyncio.create_task(self._watch(member), name=f"agent {pool.name}/{index}")
        self.members[(pool.name, index)] = member

    async def _watch(self, member: _Member) -> None:
        try:
            await member.actor.serve.remote()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # RayActorError (the process died) or the agent loop failed
            log.warning("pools.agent_died", pool=member.pool, index=member.index, error=str(exc)[:300])
            try:
                ray.kill(member.actor)  # in case the process lives on without a working loop
            except Exception:
                pass
        if self._stopping:
            return
        self.restarts += 1
        await asyncio.sleep(0.2)
        if not self._stopping:
            self._spawn(self.pools[member.pool], member.index)

    async def pids(self) -> dict[tuple[str, int], int]:
        out = {}
        for key, m in list(self.members.items()):
            out[key] = await m.actor.pid.remote()
        return out

    async def stop(self, drain_s: float = 5.0) -> None:
        self._stopping = True
        members = list(self.members.values())
        stops = [m.actor.stop.remote(drain_s) for m in members]
        try:
            await asyncio.wait_for(asyncio.gather(*stops, return_exceptions=True), drain_s + 5)
        except TimeoutError:
            pass
        for m in members:
            if m.watcher is not None:
                m.watcher.cancel()
            try:
                ray.kill(m.actor)
            except Exception:
                pass
        self.members.clear()

"""The pool manager: keeps each pool at the number of warm agents its nodes ask for.

Every `reconcile_s` (and as soon as a node changes) it computes, with `agents.sizing`, the
agents each pool wants per node group, starts the missing ones as Ray actors placed by label
selector on that group's Ray nodes, and drains the surplus (stop reading, finish what runs,
leave what never started to the others, exit). It checks every agent's heartbeat, replaces
dead or hung ones (with backoff when a pool crash-loops) and recycles agents past
`max_tasks_per_agent`. Its view of each pool is published to Redis for `GET /api/v1/pools`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
import redis.asyncio as aioredis
import structlog

from agents import sizing
from agents.actor import AgentActor
from agents.nodes import NodeSource
from agents.pools import PoolConfig
from flowforge import keys

log = structlog.get_logger("flowforge.pools")


@dataclass
class Member:
    pool: str
    group: str
    name: str
    actor: Any
    state: str = "starting"  # starting -> ready -> draining
    started_at: float = field(default_factory=time.monotonic)
    busy: int = 0
    completed: int = 0
    stuck: int = 0  # slots held by calls that ignored their timeout or cancel
    watcher: asyncio.Task[None] | None = None


@dataclass
class _PoolState:
    crashes: int = 0  # consecutive crashes, for backoff
    hold_until: float = 0.0  # no new agents before this (crash-loop backoff)
    idle_since: float = field(default_factory=time.monotonic)


class PoolManager:
    def __init__(
        self,
        pools: Mapping[str, PoolConfig],
        *,
        redis_url: str,
        partitions: int,
        agent_defaults: Mapping[str, Any],
        nodes: NodeSource,
        backlog: Callable[[str], int] = lambda pool: 0,
        reconcile_s: float = 0.5,
        heartbeat_s: float = 2.0,
        hung_after_s: float = 30.0,
        place_by_label: bool = True,
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        self.pools = dict(pools)
        self.redis_url = redis_url
        self.partitions = partitions
        self.agent_defaults = dict(agent_defaults)
        self.nodes = nodes
        self.backlog = backlog
        self.reconcile_s = reconcile_s
        self.heartbeat_s = heartbeat_s
        self.hung_after_s = hung_after_s
        self.place_by_label = place_by_label
        self.runtime_env = runtime_env  # the driver's (PYTHONPATH etc.), under each pool's own
        self.members: dict[str, Member] = {}
        self.state = {name: _PoolState() for name in self.pools}
        self.desired: dict[str, dict[str, int]] = {}
        self.restarts = 0
        self._seq = itertools.count(1)
        self._run_id = secrets.token_hex(3)  # this manager's agents never reuse an earlier one's names
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._status: aioredis.Redis | None = None
        self._last_heartbeat = 0.0
        self.nodes_seen_at = 0.0  # when the nodes behind `desired` were read

    # ---- what the scheduler and the API see ----------------------------------------------

    def capacity(self, pool: str) -> int:
        """Slots of the pool's ready agents (draining ones take no new work)."""
        cfg = self.pools.get(pool)
        if cfg is None:
            return 0
        return cfg.slots_per_agent * sum(1 for m in self.members.values() if m.pool == pool and m.state == "ready")

    def status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, cfg in self.pools.items():
            mine = [m for m in self.members.values() if m.pool == name]
            ready = [m for m in mine if m.state == "ready"]
            busy = sum(m.busy for m in ready)
            out[name] = {
                "desired": sum(self.desired.get(name, {}).values()),
                "desired_by_group": self.desired.get(name, {}),
                "ready": len(ready),
                "starting": sum(1 for m in mine if m.state == "starting"),
                "draining": sum(1 for m in mine if m.state == "draining"),
                "busy_agents": sum(1 for m in ready if m.busy),
                "busy_slots": busy,
                "stuck_slots": sum(m.stuck for m in mine),
                "free_slots": len(ready) * cfg.slots_per_agent - busy,
                "backlog": self.backlog(name),
                "groups": {g: sum(1 for m in ready if m.group == g) for g in sorted({m.group for m in mine})},
                "restarts": self.restarts,
                "nodes_seen_at": self.nodes_seen_at,
                "at": time.time(),
            }
        return out

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self, ready_timeout: float = 120.0) -> None:
        self._status = aioredis.Redis.from_url(self.redis_url, decode_responses=True)
        await self.reconcile()
        await self.wait_ready(ready_timeout)
        await self._publish()
        self._loop_task = asyncio.create_task(self._run(), name="pool manager")
        log.info("pools.ready", agents=len(self.members), pools=sorted(self.pools))

    async def wait_ready(self, timeout: float) -> None:
        """Until every agent the pools want is ready (or `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            wanted = sum(sum(g.values()) for g in self.desired.values())
            if sum(1 for m in self.members.values() if m.state == "ready") >= wanted:
                return
            await asyncio.sleep(0.05)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.nodes.wait_changed(self.reconcile_s)
                await self.reconcile()
                if time.monotonic() - self._last_heartbeat >= self.heartbeat_s:
                    self._last_heartbeat = time.monotonic()
                    await self.heartbeat()
                await self._publish()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a node source or Redis blip: try again next round
                log.warning("pools.reconcile_failed", error=repr(exc))
                await asyncio.sleep(self.reconcile_s)

    async def stop(self, drain_s: float = 5.0) -> None:
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        members = list(self.members.values())
        stops = [m.actor.stop.remote(drain_s) for m in members]
        try:
            await asyncio.wait_for(asyncio.gather(*stops, return_exceptions=True), drain_s + 5)
        except TimeoutError:
            pass
        for m in members:
            if m.watcher is not None:
                m.watcher.cancel()
            _kill(m.actor)
        self.members.clear()
        await self.nodes.close()
        if self._status is not None:
            await self._status.aclose()

    # ---- reconcile -----------------------------------------------------------------------

    async def reconcile(self) -> None:
        seen_at = time.time()
        nodes = await self.nodes.snapshot()
        self.nodes_seen_at = seen_at
        now = time.monotonic()
        for name, cfg in self.pools.items():
            st = self.state[name]
            live = [m for m in self.members.values() if m.pool == name and m.state != "draining"]
            backlog = self.backlog(name)
            if backlog or any(m.busy for m in live):
                st.idle_since = now
            want = sizing.desired(cfg, nodes, current=len(live), backlog=backlog, idle_for=now - st.idle_since)
            self.desired[name] = want
            for group in sorted({*want, *(m.group for m in live)}):
                have = [m for m in live if m.group == group]
                missing = want.get(group, 0) - len(have)
                if missing > 0 and now >= st.hold_until:
                    for _ in range(missing):
                        self._spawn(cfg, group)
                elif missing < 0:
                    # Drain the idlest first, the youngest among equals (least warmed up).
                    for m in sorted(have, key=lambda m: (m.busy, -m.started_at))[:-missing]:
                        self._drain(m, cfg.drain_timeout_seconds, "scale down")

    def _spawn(self, cfg: PoolConfig, group: str) -> Member:
        name = f"{cfg.name}-{group}-{self._run_id}{next(self._seq)}"  # unique: it names a stream consumer
        options: dict[str, Any] = {"num_cpus": cfg.resources.cpu or 0, "num_gpus": cfg.resources.gpu or 0}
        if cfg.resources.memory:
            from flowforge.domain.routing import quantity

            options["memory"] = int(quantity(cfg.resources.memory))
        if self.place_by_label:
            options["label_selector"] = {sizing.GROUP_LABEL: group}
        env = _runtime_env(self.runtime_env, cfg)
        if env:
            options["runtime_env"] = env
        actor = AgentActor.options(**options).remote(self._config(cfg, name))
        member = Member(cfg.name, group, name, actor)
        member.watcher = asyncio.create_task(self._watch(member), name=f"agent {name}")
        self.members[name] = member
        log.info("pools.agent_starting", pool=cfg.name, group=group, agent=name)
        return member

    def _config(self, cfg: PoolConfig, name: str) -> dict[str, Any]:
        return dict(
            self.agent_defaults,
            pool=cfg.name,
            redis_url=self.redis_url,
            partitions=self.partitions,
            slots=cfg.slots_per_agent,
            allowed_functions=tuple(cfg.allowed_functions),
            prewarm=tuple(cfg.prewarm),
            name=name,
        )

    async def _watch(self, member: Member) -> None:
        """Mark the agent ready once it has prewarmed and reads its streams; when its loop ends,
        forget it (a crash is counted for backoff, and the next reconcile starts a replacement)."""
        try:
            serving = asyncio.ensure_future(member.actor.serve.remote())
            ready = asyncio.ensure_future(member.actor.wait_ready.remote())
            await asyncio.wait([ready, serving], return_when=asyncio.FIRST_COMPLETED)
            if not serving.done():
                ready.result()  # an agent that failed while warming up raises here
                if member.state == "starting":
                    member.state = "ready"
                    self.state[member.pool].crashes = 0
            else:
                ready.cancel()
            await serving
            crashed = member.state != "draining"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # RayActorError (the process died) or the agent loop failed
            crashed = member.state != "draining"
            if crashed:
                log.warning("pools.agent_died", pool=member.pool, agent=member.name, error=str(exc)[:300])
        _kill(member.actor)
        self.members.pop(member.name, None)
        if crashed and not self._stopping:
            self.restarts += 1
            st = self.state[member.pool]
            st.crashes += 1
            st.hold_until = time.monotonic() + min(30.0, 0.2 * 2 ** (st.crashes - 1))

    def _drain(self, member: Member, timeout: float, why: str) -> None:
        member.state = "draining"
        log.info("pools.agent_draining", pool=member.pool, agent=member.name, why=why)
        member.actor.stop.remote(timeout)  # the watcher forgets it when its loop has ended

    async def heartbeat(self) -> None:
        """Ask every agent for its stats; a silent one is hung: kill it (its work is reclaimed)."""
        members = [m for m in self.members.values() if m.state == "ready"]
        replies = await asyncio.gather(
            *(asyncio.wait_for(m.actor.stats.remote(), self.hung_after_s) for m in members),
            return_exceptions=True,
        )
        for m, reply in zip(members, replies, strict=True):
            if isinstance(reply, BaseException):
                log.warning("pools.agent_hung", pool=m.pool, agent=m.name, error=repr(reply)[:200])
                _kill(m.actor)  # its watcher sees it die and counts the restart
                continue
            m.busy, m.completed = int(reply.get("running") or 0), int(reply.get("completed") or 0)
            m.stuck = int(reply.get("stuck") or 0)
            cfg = self.pools[m.pool]
            if m.stuck:
                # A call that ignored its timeout or cancel runs on, its attempt already ended,
                # and holds a slot the scheduler counts free: only the process's end stops it.
                self._spawn(cfg, m.group)
                self._drain(m, cfg.drain_timeout_seconds, f"{m.stuck} slot(s) run code that ignored its stop")
            elif cfg.max_tasks_per_agent and m.completed >= cfg.max_tasks_per_agent:
                self._spawn(cfg, m.group)  # the replacement warms up while the old one drains
                self._drain(m, cfg.drain_timeout_seconds, f"recycled after {m.completed} attempts")

    async def _publish(self) -> None:
        if self._status is None:
            return
        status = self.status()
        await self._status.hset(keys.POOL_STATUS, mapping={k: json.dumps(v) for k, v in status.items()})

    async def pids(self) -> dict[str, int]:
        out = {}
        for name, m in list(self.members.items()):
            out[name] = await m.actor.pid.remote()
        return out


def _runtime_env(base: dict[str, Any] | None, cfg: PoolConfig) -> dict[str, Any]:
    env = dict(base or {})
    own = cfg.runtime_env
    if own.env_vars:
        env["env_vars"] = {**env.get("env_vars", {}), **own.env_vars}
    if own.pip:
        env["pip"] = list(own.pip)
    if own.working_dir:
        env["working_dir"] = own.working_dir
    return env


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor)
    except Exception:  # already gone
        pass


"""The resident agent as a Ray actor (`agents.manager` keeps each pool's agents warm)."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import ray
import structlog

from agents import worker
from flowforge import servicelog

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
        servicelog.configure(str(level), str(config.pop("log_format", "console")))
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

    def wait_ready(self, timeout: float = 300.0) -> bool:
        """Block until the agent has prewarmed its modules and reads its streams."""
        async def ready() -> None:
            await self.agent.ready.wait()

        self._call(ready(), timeout=timeout)
        return True

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        """The Ray node this agent runs on."""
        return ray.get_runtime_context().get_node_id()

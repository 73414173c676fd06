"""The local-process Pod runtime, the embedded default: each heavy attempt is a fresh process on
this machine (the Pod-side runtime for a Python `fn`, or the task's command for a container,
whose image is not used here). Memory is capped with RLIMIT_AS where the OS allows it; stop is
SIGTERM, then SIGKILL after the grace period; output is captured line by line."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

import structlog

from agents import pods
from flowforge.domain.routing import quantity

log = structlog.get_logger("flowforge.pods.local")
_MAX_LINE = 8192


class LocalProcessRuntime:
    outlives_launcher = False

    def __init__(self, *, max_log_lines: int = 10_000, default_memory: str | None = None,
                 cwd: str | None = None) -> None:
        self.max_log_lines = max_log_lines
        self.default_memory = default_memory
        self.cwd = cwd or os.getcwd()
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._stopped: set[str] = set()

    async def run(self, request: pods.PodRequest) -> pods.PodOutcome:
        created = time.monotonic()
        env = {**os.environ, **request.env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (self.cwd, os.environ.get("PYTHONPATH", "")) if p)
        memory = request.memory or self.default_memory
        try:
            proc = await asyncio.create_subprocess_exec(
                *request.command, *request.args, cwd=self.cwd, env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                preexec_fn=_limits(memory), start_new_session=True, limit=4 << 20,
            )
        except OSError as exc:  # the command does not exist or cannot run: as a bad image would
            return pods.PodOutcome("image_pull", message=f"cannot start {request.command[0]!r}: {exc.strerror}")
        startup = time.monotonic() - created
        self._procs[request.name] = proc
        logs: list[tuple[float, str, str]] = []
        try:
            await asyncio.gather(self._pump(proc.stdout, "stdout", logs), self._pump(proc.stderr, "stderr", logs))
            code = await proc.wait()
        finally:
            self._procs.pop(request.name, None)
        stopped = request.name in self._stopped
        self._stopped.discard(request.name)
        if stopped and code != 0:
            return pods.PodOutcome("stopped", code, "stopped", logs, startup)
        if code == 0:
            return pods.PodOutcome("succeeded", 0, "", logs, startup)
        if code in (137, -signal.SIGKILL) and memory is not None:
            return pods.PodOutcome("oom_killed", 137, f"exceeded its memory limit ({memory})", logs, startup)
        if code < 0:
            return pods.PodOutcome("failed", 128 - code, f"killed by signal {signal.Signals(-code).name}",
                                   logs, startup)
        return pods.PodOutcome("failed", code, f"exited with code {code}", logs, startup)

    async def _pump(self, stream: asyncio.StreamReader | None, name: str, logs: list[tuple[float, str, str]]) -> None:
        assert stream is not None
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the reader's limit: take what is there
                line = await stream.read(_MAX_LINE)
            if not line:
                return
            result = line.startswith(pods.RESULT_MARK.encode())  # kept whole, and past the line cap
            if result or len(logs) < self.max_log_lines:
                text = line if result else line[:_MAX_LINE]
                logs.append((time.time(), name, text.decode("utf-8", "replace").rstrip("\n")))

    async def stop(self, name: str, grace_s: float) -> None:
        proc = self._procs.get(name)
        if proc is None or proc.returncode is not None:
            return
        self._stopped.add(name)
        _signal(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            _signal(proc, signal.SIGKILL)

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(name, 1.0) for name in list(self._procs)), return_exceptions=True)


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the whole process group: a shell's children too
    except ProcessLookupError:
        pass


def _limits(memory: str | None) -> Any:
    if memory is None or not sys.platform.startswith("linux"):
        return None
    limit = int(quantity(memory))

    def apply() -> None:  # runs in the child between fork and exec
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply

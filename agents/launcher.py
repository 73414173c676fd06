"""The Pod launcher: an agent whose slots run heavy attempts in fresh Pods instead of threads.

It reads the heavy dispatch stream exactly as an agent reads its pool's stream (consumer group,
leases, reclaim, dead letters, cancels), hands each attempt to a `PodRuntime`, and turns the
Pod's outcome into the attempt's result, published and acknowledged atomically like any other.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from agents import capture, interrupt, pods, podrun, worker
from flowforge import wire

log = structlog.get_logger("flowforge.launcher")

# Outcomes that are the platform's doing, not the task's: (reason, retryable).
_FAILURES: dict[str, tuple[str, bool]] = {
    "oom_killed": (wire.FAIL_OOM, True),
    "infrastructure": (wire.FAIL_INFRASTRUCTURE, True),
    "image_pull": (wire.FAIL_IMAGE, False),
    "unschedulable": (wire.FAIL_UNSCHEDULABLE, False),
    "deadline": (wire.FAIL_TIMEOUT, True),
}


class Launcher(worker.Agent):
    def __init__(self, config: worker.AgentConfig, runtime: pods.PodRuntime, *,
                 allowed: Mapping[str, Sequence[str]], stop_grace_s: float = 10.0,
                 fn_command: Sequence[str] = (sys.executable, "-m", "agents.podrun"),
                 fn_image: str | None = None, on_startup: Callable[[float], None] | None = None) -> None:
        """`on_startup` is told each Pod's startup seconds (created to running): a metric."""
        super().__init__(config)
        self.on_startup = on_startup
        self.runtime = runtime
        self.allowed = allowed  # pool -> the module globs its tasks' functions may come from
        self.stop_grace_s = stop_grace_s
        self.fn_command = list(fn_command)
        self.fn_image = fn_image
        self._pods: dict[tuple[str, str, int], str] = {}
        self._stopping_pods: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        collecting = asyncio.create_task(self._collect_garbage(), name="pod gc")
        try:
            await super().serve()
        finally:
            collecting.cancel()
            await asyncio.gather(collecting, return_exceptions=True)
            await self.runtime.close()

    async def _collect_garbage(self, every_s: float = 30.0) -> None:
        """Delete finished Pods past their TTL (runtimes whose Pods outlive their attempt)."""
        collect = getattr(self.runtime, "collect_garbage", None)
        if collect is None:
            return
        while True:
            await asyncio.sleep(every_s)
            try:
                removed = await collect()
            except Exception as exc:  # the API server is away: next round
                log.warning("launcher.gc_failed", error=repr(exc))
                continue
            if removed:
                log.info("launcher.gc", pods=removed)

    def request(self, env: dict[str, Any]) -> pods.PodRequest:
        """The Pod for one attempt envelope."""
        pod = env.get("pod") or {}
        res = pod.get("resources") or {}
        name = pods.pod_name(env["run"], env["task"], env["attempt"])
        labels = {"app.kubernetes.io/managed-by": "flowforge",
                  "flowforge.io/tenant": pods.label_value(str(env.get("tenant") or "")),
                  "flowforge.io/run": env["run"], "flowforge.io/task": pods.label_value(env["task"]),
                  "flowforge.io/attempt": str(env["attempt"])}
        common: dict[str, Any] = dict(
            name=name, labels=labels, env=dict(pod.get("env") or {}), cpu=_str(res.get("cpu")),
            memory=_str(res.get("memory")), gpu=int(res.get("gpu") or 0), node_selector=pod.get("node_selector") or {},
            tolerations=pod.get("tolerations") or [], timeout_s=env.get("timeout"),
        )
        if env.get("fn"):  # a Python function, run by the Pod-side runtime
            pool = pod.get("pool") or "default"
            attempt = {k: env.get(k) for k in ("tenant", "run", "task", "attempt", "map_index", "fn", "args")}
            attempt.update(pool=pool, allowed=list(self.allowed.get(pool, ())))
            common["env"][podrun.ATTEMPT_ENV] = podrun.encode(attempt)
            return pods.PodRequest(command=self.fn_command, image=pod.get("image") or self.fn_image, **common)
        args = env.get("args") or []
        return pods.PodRequest(command=list(pod.get("command") or []), image=pod.get("image"),
                               args=[a if isinstance(a, str) else json.dumps(a) for a in args], **common)

    async def _call(self, a: worker._Attempt, cap: capture.Capture) -> Any:
        env = a.env
        request = self.request(env)
        if request.image is None and self.runtime.outlives_launcher:
            raise worker.AttemptFailed(wire.FAIL_REJECTED, "a heavy Python task needs an image on Kubernetes: set "
                                       "the task's image, or pods.image (the agent image)", retryable=False)
        self._pods[a.ident] = request.name
        created = time.time()
        running = asyncio.ensure_future(self.runtime.run(request))
        try:
            timeout = env.get("timeout")
            try:
                outcome = await asyncio.wait_for(asyncio.shield(running), timeout) if timeout else await running
            except TimeoutError:
                a.stop_reason = wire.FAIL_TIMEOUT  # type: ignore[attr-defined]
                await self.runtime.stop(request.name, self.stop_grace_s)
                outcome = await running
        except asyncio.CancelledError:  # the launcher is shutting down
            if not self.runtime.outlives_launcher:  # a local process would be orphaned: stop it
                await asyncio.shield(self.runtime.stop(request.name, self.stop_grace_s))
            raise
        finally:
            self._pods.pop(a.ident, None)
        if outcome.startup_s is not None:
            self.latency["start"].append(outcome.startup_s)
            if self.on_startup is not None:
                self.on_startup(outcome.startup_s)
            a.began = created + outcome.startup_s
            cap.write("system", f"{request.name} started in {outcome.startup_s:.3f}s\n")
        return self._result(a, outcome, cap, python=bool(env.get("fn")))

    def _result(self, a: worker._Attempt, outcome: pods.PodOutcome, cap: capture.Capture, *, python: bool) -> Any:
        reported: dict[str, Any] | None = None
        logs = outcome.logs
        for i, (_at, stream, line) in enumerate(logs):
            if not line and i + 1 < len(logs) and logs[i + 1][2].startswith(pods.RESULT_MARK):
                continue  # the runtime starts the result on a line of its own
            if line.startswith(pods.RESULT_MARK):
                try:
                    reported = json.loads(line[len(pods.RESULT_MARK):])
                except ValueError:
                    reported = {"ok": False, "reason": wire.FAIL_REJECTED, "error": "unreadable result line"}
            else:
                cap.write(stream, line + "\n")
        stopped = getattr(a, "stop_reason", None)
        if stopped is not None:
            raise interrupt.AttemptInterrupted(stopped)
        if outcome.phase == "stopped":
            raise interrupt.AttemptInterrupted(wire.FAIL_CANCELLED)
        if outcome.phase in _FAILURES:
            reason, retryable = _FAILURES[outcome.phase]
            raise worker.AttemptFailed(reason, outcome.message, retryable=retryable)
        if python and reported is not None:
            if isinstance(reported.get("started_at"), float):
                a.began = reported["started_at"]  # when the function itself started
            if reported.get("ok"):
                self._check_result(reported.get("output"))
                return reported.get("output")
            reason = str(reported.get("reason") or wire.FAIL_ERROR)
            raise worker.AttemptFailed(reason, str(reported.get("error") or outcome.message),
                                       retryable=reason != wire.FAIL_REJECTED)
        if outcome.phase == "succeeded":
            if python:
                raise worker.AttemptFailed(wire.FAIL_ERROR, "the Pod exited 0 without reporting a result")
            return None
        raise worker.AttemptFailed(wire.FAIL_ERROR, outcome.message + _tail(outcome))

    def _stop_attempt(self, a: worker._Attempt, reason: str) -> None:
        a.stop_reason = reason  # type: ignore[attr-defined]
        name = self._pods.get(a.ident)
        if name is None:
            return  # not started: `_run` sees the cancel before it starts a Pod
        job = asyncio.get_running_loop().create_task(self.runtime.stop(name, self.stop_grace_s))
        self._stopping_pods.add(job)
        job.add_done_callback(self._stopping_pods.discard)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _tail(outcome: pods.PodOutcome, lines: int = 5) -> str:
    err = [line for _t, stream, line in outcome.logs if stream == "stderr"][-lines:]
    return ("; last stderr lines:\n" + "\n".join(err)) if err else ""

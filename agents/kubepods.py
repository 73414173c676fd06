"""The Kubernetes Pod runtime: one Pod per heavy attempt, followed with the watch API.

`manifest` (what Pod to create) and `classify` (what a Pod's status means) are pure functions
over the API's JSON; `KubernetesPodRuntime` does the I/O through the official client, whose
blocking calls run in threads. One watch per runtime follows every FlowForge Pod of the
namespace; each `run` waits on its Pod's latest state, with no polling.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import structlog

from agents import pods

log = structlog.get_logger("flowforge.pods.kubernetes")
MANAGED = "app.kubernetes.io/managed-by=flowforge"
CONTAINER = "task"
_PULL_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"}
_FRACTION = re.compile(r"(\.\d{6})\d+")  # Python parses at most microseconds
_CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


@dataclass(frozen=True)
class Options:
    namespace: str = "default"
    service_account: str | None = None
    automount_service_account_token: bool = False
    run_as_user: int = 10001
    start_timeout_s: float = 300.0  # a Pod still not running (image pull, scheduling) fails after this
    stop_grace_s: float = 10.0
    ttl_s: float = 600.0  # finished Pods are deleted this long after they ended
    create_qps: float = 5.0
    create_burst: int = 10
    max_log_lines: int = 10_000
    max_log_bytes: int = 4 << 20
    # Added to every heavy Pod (Kubernetes JSON, camelCase): e.g. an init container staging the
    # runtime, a log-shipping sidecar, shared volumes.
    init_containers: list[dict[str, Any]] = field(default_factory=list)
    sidecars: list[dict[str, Any]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)


# ---- pure: the Pod we create, and what its status means ------------------------------------------


def manifest(request: pods.PodRequest, opts: Options) -> dict[str, Any]:
    """The Pod for one heavy attempt, with a restricted security context by default."""
    if not request.image:
        raise ValueError("a Kubernetes Pod needs an image: set the task's image, or pods.image for Python tasks")
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if request.cpu is not None:
        requests["cpu"] = limits["cpu"] = str(request.cpu)
    if request.memory is not None:
        requests["memory"] = limits["memory"] = str(request.memory)
    if request.gpu:
        limits["nvidia.com/gpu"] = str(request.gpu)
    env = {**opts.env, **request.env}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": request.image,
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {k: v for k, v in (("requests", requests), ("limits", limits)) if v},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "runAsUser": opts.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if request.command:
        container["command"] = list(request.command)
    if request.args:
        container["args"] = list(request.args)
    if opts.volume_mounts:
        container["volumeMounts"] = list(opts.volume_mounts)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": opts.automount_service_account_token,
        "securityContext": {"runAsNonRoot": True, "runAsUser": opts.run_as_user,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": int(math.ceil(opts.stop_grace_s)),
        "containers": [container, *opts.sidecars],
    }
    if opts.service_account:
        spec["serviceAccountName"] = opts.service_account
    if request.timeout_s:
        spec["activeDeadlineSeconds"] = int(math.ceil(request.timeout_s))
    if request.node_selector:
        spec["nodeSelector"] = dict(request.node_selector)
    if request.tolerations:
        spec["tolerations"] = [_toleration(t) for t in request.tolerations]
    if opts.init_containers:
        spec["initContainers"] = list(opts.init_containers)
    if opts.volumes:
        spec["volumes"] = list(opts.volumes)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": request.name, "namespace": opts.namespace,
                     "labels": {**request.labels, "app.kubernetes.io/managed-by": "flowforge"}},
        "spec": spec,
    }


def _toleration(t: Mapping[str, Any]) -> dict[str, Any]:
    names = {"key": "key", "operator": "operator", "value": "value", "effect": "effect",
             "toleration_seconds": "tolerationSeconds"}
    return {names[k]: v for k, v in t.items() if k in names and v is not None}


def classify(pod: Mapping[str, Any], *, now: float, start_timeout_s: float) -> pods.PodOutcome | None:
    """What a Pod's state means for its attempt; None while it is still on its way."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    task = _container(status)
    terminated = ((task or {}).get("state") or {}).get("terminated")
    disrupted = _condition(status, "DisruptionTarget")
    if phase == "Succeeded":
        return pods.PodOutcome("succeeded", 0)
    if phase == "Failed":
        reason = status.get("reason") or ""
        if reason == "Evicted" or (disrupted and disrupted.get("status") == "True"):
            why = status.get("message") or (disrupted or {}).get("message") or reason
            return pods.PodOutcome("infrastructure", _exit(terminated), f"the Pod was {reason.lower() or 'disrupted'}: {why}")
        if reason == "DeadlineExceeded":
            return pods.PodOutcome("deadline", _exit(terminated), "the Pod ran past its activeDeadlineSeconds")
        if terminated and terminated.get("reason") == "OOMKilled":
            return pods.PodOutcome("oom_killed", _exit(terminated), "the container was OOMKilled (over its memory limit)")
        code = _exit(terminated)
        detail = (terminated or {}).get("message") or ""
        return pods.PodOutcome("failed", code, f"exited with code {code}" + (f": {detail.strip()[-500:]}" if detail else ""))
    if pod.get("metadata", {}).get("deletionTimestamp") and disrupted and disrupted.get("status") == "True":
        return pods.PodOutcome("infrastructure", None, f"the Pod is being disrupted: {disrupted.get('message') or disrupted.get('reason')}")
    age = now - _ts((pod.get("metadata") or {}).get("creationTimestamp"), now)
    waiting = ((task or {}).get("state") or {}).get("waiting") or {}
    why = waiting.get("reason") or ""
    if why == "InvalidImageName" or (why in _PULL_ERRORS and age > start_timeout_s):
        return pods.PodOutcome("image_pull", None, f"{why}: {waiting.get('message') or 'the image cannot be pulled'}")
    if why in _CONFIG_ERRORS and age > start_timeout_s:
        return pods.PodOutcome("image_pull", None, f"{why}: {waiting.get('message') or 'the container cannot start'}")
    scheduled = _condition(status, "PodScheduled")
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable" \
            and age > start_timeout_s:
        return pods.PodOutcome("unschedulable", None,
                               f"no node could run the Pod in {start_timeout_s:g}s: {scheduled.get('message') or ''}")
    return None


def startup_seconds(pod: Mapping[str, Any]) -> float | None:
    """Created -> its task container started."""
    task = _container(pod.get("status") or {}) or {}
    state = task.get("state") or {}
    started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
    created = (pod.get("metadata") or {}).get("creationTimestamp")
    if not started or not created:
        return None
    return max(0.0, _ts(started, 0) - _ts(created, 0))


def parse_logs(text: str) -> list[tuple[float, str, str]]:
    """`timestamps=true` log text -> (unix time, "stdout", line)."""
    out = []
    for raw in text.splitlines():
        stamp, _, line = raw.partition(" ")
        at = _ts(stamp, None)
        out.append((at, "stdout", line) if at is not None else (time.time(), "stdout", raw))
    return out


def _container(status: Mapping[str, Any]) -> dict[str, Any] | None:
    for c in status.get("containerStatuses") or ():
        if c.get("name") == CONTAINER:
            return c
    return None


def _condition(status: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or () if c.get("type") == kind), None)


def _exit(terminated: Mapping[str, Any] | None) -> int | None:
    code = (terminated or {}).get("exitCode")
    return int(code) if isinstance(code, int) else None


def _ts(value: Any, default: Any) -> Any:
    """An RFC 3339 time from the API (seconds, or nanoseconds in log lines) as unix seconds."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if not isinstance(value, str) or not value:
        return default
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00"))
    except ValueError:
        return default
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


# ---- I/O ------------------------------------------------------------------------------------


class _RateLimiter:
    """Token bucket: at most `burst` at once, refilled at `qps` per second."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps, self.burst = qps, max(1, burst)
        self.tokens = float(self.burst)
        self.at = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> float:
        """Wait for a token; return how long that took."""
        began = time.monotonic()
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.at) * self.qps)
                self.at = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return now - began
                await asyncio.sleep((1 - self.tokens) / self.qps)


class KubernetesPodRuntime:
    outlives_launcher = True

    def __init__(self, api: Any, opts: Options) -> None:
        """`api`: a `kubernetes.client.CoreV1Api`."""
        self.api = api
        self.opts = opts
        self.limiter = _RateLimiter(opts.create_qps, opts.create_burst)
        self._pods: dict[str, dict[str, Any]] = {}  # name -> latest JSON seen by the watch
        self._changed: dict[str, asyncio.Event] = {}
        self._deleted: set[str] = set()
        self._stopping: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch_thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._watcher: Any = None

    # -- the watch ------------------------------------------------------------------------

    def _ensure_watch(self) -> None:
        if self._watch_thread is None:
            self._loop = asyncio.get_running_loop()
            self._watch_thread = threading.Thread(target=self._watch_forever, name="ff-pod-watch", daemon=True)
            self._watch_thread.start()

    def _watch_forever(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        version: str | None = None
        while not self._closed.is_set():
            try:
                if version is None:  # (re)list: the watch resumes from the list's version
                    listed = self.api.list_namespaced_pod(self.opts.namespace, label_selector=MANAGED)
                    version = listed.metadata.resource_version
                    for item in listed.items:
                        self._publish("MODIFIED", self._json(item))
                self._watcher = watch.Watch()
                for event in self._watcher.stream(self.api.list_namespaced_pod, self.opts.namespace,
                                                  label_selector=MANAGED, resource_version=version,
                                                  timeout_seconds=30, allow_watch_bookmarks=True):
                    if self._closed.is_set():
                        break
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raw = obj if isinstance(obj, dict) else self._json(obj)
                        if raw.get("code") == 410:
                            version = None  # too old: list again
                            break
                        raise RuntimeError(f"watch error: {raw.get('message')}")
                    pod = obj if isinstance(obj, dict) else self._json(obj)
                    version = (pod.get("metadata") or {}).get("resourceVersion") or version
                    if event["type"] != "BOOKMARK":
                        self._publish(event["type"], pod)
            except ApiException as exc:
                if exc.status == 410:
                    version = None
                    continue
                log.warning("pods.watch_failed", error=f"{exc.status} {exc.reason}")
                self._closed.wait(1.0)
            except Exception as exc:  # the API server went away: retry; runs wait meanwhile
                if self._closed.is_set():
                    return
                log.warning("pods.watch_failed", error=repr(exc))
                version = None
                self._closed.wait(1.0)

    def _json(self, obj: Any) -> dict[str, Any]:
        return self.api.api_client.sanitize_for_serialization(obj)

    def _publish(self, kind: str, pod: dict[str, Any]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_event, kind, pod)

    def _on_event(self, kind: str, pod: dict[str, Any]) -> None:
        name = (pod.get("metadata") or {}).get("name")
        if not name:
            return
        event = self._changed.get(name)
        if kind == "DELETED" and event is None:  # gone, and nobody follows it: forget it
            self._pods.pop(name, None)
            self._deleted.discard(name)
            return
        if kind == "DELETED":
            self._deleted.add(name)
        self._pods[name] = pod
        if event is not None:
            event.set()

    # -- one attempt ----------------------------------------------------------------------

    async def run(self, request: pods.PodRequest) -> pods.PodOutcome:
        from kubernetes.client.exceptions import ApiException

        self._ensure_watch()
        body = manifest(request, self.opts)
        name = request.name
        changed = self._changed.setdefault(name, asyncio.Event())
        try:
            await self.limiter.acquire()
            try:
                await asyncio.to_thread(self.api.create_namespaced_pod, self.opts.namespace, body)
            except ApiException as exc:
                if exc.status != 409:  # 409: this attempt's Pod exists (a redelivery): follow it
                    return pods.PodOutcome("image_pull" if exc.status in (400, 422) else "infrastructure", None,
                                           f"the Pod could not be created: {exc.status} {_api_message(exc)}")
            outcome = await self._follow(name, changed)
            logs = await self._logs(name)
            return pods.PodOutcome(outcome.phase, outcome.exit_code, outcome.message, logs,
                                   startup_seconds(self._pods.get(name) or {}))
        finally:
            self._changed.pop(name, None)
            self._stopping.discard(name)
            if name in self._deleted:  # the cache keeps only Pods that still exist
                self._pods.pop(name, None)
                self._deleted.discard(name)
            if self.opts.ttl_s <= 0:
                await self._delete(name, 0)

    async def _follow(self, name: str, changed: asyncio.Event) -> pods.PodOutcome:
        while True:
            pod = self._pods.get(name)
            if pod is not None:
                if name in self._deleted:
                    if name in self._stopping:
                        return pods.PodOutcome("stopped", None, "stopped")
                    done = classify(pod, now=time.time(), start_timeout_s=self.opts.start_timeout_s)
                    return done or pods.PodOutcome("infrastructure", None,
                                                   "the Pod was deleted before it finished (node lost or preempted)")
                done = classify(pod, now=time.time(), start_timeout_s=self.opts.start_timeout_s)
                if done is not None:
                    if done.phase in ("image_pull", "unschedulable"):
                        await self._delete(name, 0)
                    if name in self._stopping and done.phase != "succeeded":
                        return pods.PodOutcome("stopped", done.exit_code, "stopped")
                    return done
            changed.clear()
            try:  # a waiting Pod is re-judged now and then: its start timeout runs on the clock
                await asyncio.wait_for(changed.wait(), timeout=min(5.0, self.opts.start_timeout_s))
            except TimeoutError:
                pass

    async def _logs(self, name: str) -> list[tuple[float, str, str]]:
        from kubernetes.client.exceptions import ApiException

        try:
            text = await asyncio.to_thread(
                self.api.read_namespaced_pod_log, name, self.opts.namespace, container=CONTAINER, timestamps=True,
                tail_lines=self.opts.max_log_lines + 1, limit_bytes=self.opts.max_log_bytes,
            )
        except ApiException as exc:
            if exc.status in (400, 404):  # never started, or already gone
                return []
            raise
        return parse_logs(text or "")

    async def stop(self, name: str, grace_s: float) -> None:
        self._stopping.add(name)
        await self._delete(name, grace_s)

    async def _delete(self, name: str, grace_s: float) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            await asyncio.to_thread(self.api.delete_namespaced_pod, name, self.opts.namespace,
                                    grace_period_seconds=int(math.ceil(grace_s)))
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def collect_garbage(self, now: float | None = None) -> int:
        """Delete FlowForge Pods that ended more than `ttl_s` ago; return how many."""
        now = time.time() if now is None else now
        listed = await asyncio.to_thread(self.api.list_namespaced_pod, self.opts.namespace, label_selector=MANAGED)
        old = []
        for item in listed.items:
            pod = self._json(item)
            status = pod.get("status") or {}
            if status.get("phase") not in ("Succeeded", "Failed") or (pod.get("metadata") or {}).get("deletionTimestamp"):
                continue
            term = ((_container(status) or {}).get("state") or {}).get("terminated") or {}
            ended = _ts(term.get("finishedAt"), None) or _ts((pod.get("metadata") or {}).get("creationTimestamp"), now)
            if now - ended >= self.opts.ttl_s:
                old.append(pod["metadata"]["name"])
        for name in old:
            await self._delete(name, 0)
        return len(old)

    async def close(self) -> None:
        """Stop watching. Running Pods keep running: the next delivery of their attempt follows them."""
        self._closed.set()
        await stop_watch(self._watch_thread, lambda: self._watcher)


async def stop_watch(thread: threading.Thread | None, watcher: Callable[[], Any]) -> None:
    """End a watch thread (within 5 s): the client forgets a `Watch.stop()` that lands between
    two streams, so it is repeated until the thread is gone."""
    if thread is None:
        return

    def join() -> None:
        deadline = time.monotonic() + 5
        while thread.is_alive() and time.monotonic() < deadline:
            current = watcher()
            if current is not None:
                current.stop()
            thread.join(0.05)

    await asyncio.to_thread(join)


def _api_message(exc: Any) -> str:
    import json

    try:
        return json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)

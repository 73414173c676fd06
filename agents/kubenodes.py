"""The cluster's nodes, as the pool sizing sees them: followed with the Kubernetes watch API.

`KubernetesNodes` keeps the latest `sizing.Node` of every node (name, labels, annotations and
readiness) from one list-then-watch in a background thread, wakes whoever waits in
`wait_changed` when that view changes, and writes pool counts into the nodes'
`flowforge.io/agent-pools` annotation. The official client is blocking: its calls run in threads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from agents import sizing
from agents.kubepods import stop_watch

log = structlog.get_logger("flowforge.nodes.kubernetes")
MERGE_PATCH = "application/merge-patch+json"


def node_of(obj: Mapping[str, Any]) -> sizing.Node:
    """A Node's API JSON -> what the sizing needs: ready means the kubelet reports `Ready=True`
    and the node is not cordoned (`spec.unschedulable`)."""
    meta = obj.get("metadata") or {}
    conditions = (obj.get("status") or {}).get("conditions") or ()
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    cordoned = bool((obj.get("spec") or {}).get("unschedulable"))
    return sizing.Node(meta.get("name") or "", dict(meta.get("labels") or {}),
                       dict(meta.get("annotations") or {}), ready and not cordoned)


class KubernetesNodes:
    """The `NodeSource` over a Kubernetes cluster. Only what a `sizing.Node` shows counts as a
    change: a node's heartbeat or capacity updates do not wake `wait_changed`."""

    def __init__(self, api: Any, *, label_selector: str | None = None) -> None:
        """`api`: a `kubernetes.client.CoreV1Api`; `label_selector` limits the nodes followed."""
        self.api = api
        self.label_selector = label_selector
        self._nodes: dict[str, sizing.Node] = {}  # name -> latest seen by the list/watch
        self._changed = asyncio.Event()
        self._started = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch_thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._watcher: Any = None

    # -- the port -------------------------------------------------------------------------

    async def snapshot(self) -> list[sizing.Node]:
        """The current nodes, by name. The first call lists them and starts the watch."""
        await self._ensure_watch()
        self._changed.clear()
        return sorted(self._nodes.values(), key=lambda n: n.name)

    async def wait_changed(self, timeout: float) -> bool:
        """True once a node was added, changed or removed since the last call (or snapshot);
        False after `timeout` seconds without a change."""
        await self._ensure_watch()
        if not self._changed.is_set():
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                return False
        self._changed.clear()
        return True

    async def annotate(self, group: str, counts: Mapping[str, int]) -> list[str]:
        """Set these pools' counts on every node of node group `group`, keeping the other pools
        each node names; return the names of the nodes patched. The counts merge into the
        annotation as the watch last saw it; a node deleted meanwhile is skipped. LookupError
        when no node is in the group, ValueError for counts the annotation cannot hold."""
        from kubernetes.client.exceptions import ApiException

        sizing.parse_annotation(sizing.format_annotation(counts))  # ValueError before any write
        await self._ensure_watch()
        members = sorted((n for n in self._nodes.values() if n.group == group), key=lambda n: n.name)
        if not members:
            known = sorted({n.group for n in self._nodes.values() if n.group is not None})
            raise LookupError(f"no nodes in node group {group!r} (known groups: {', '.join(known) or 'none'})")
        patched = []
        for node in members:
            merged = {**_pools(node), **counts}
            body = {"metadata": {"annotations": {sizing.ANNOTATION: sizing.format_annotation(merged)}}}
            try:
                await asyncio.to_thread(self.api.patch_node, node.name, body, _content_type=MERGE_PATCH)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                continue
            patched.append(node.name)
        return patched

    async def close(self) -> None:
        """Stop watching (the thread is gone when this returns, or after 5 s at worst)."""
        self._closed.set()
        await stop_watch(self._watch_thread, lambda: self._watcher)

    # -- the watch ------------------------------------------------------------------------

    async def _ensure_watch(self) -> None:
        """List once (errors reach the caller), then follow from the list's version in a thread."""
        async with self._started:
            if self._watch_thread is not None:
                return
            nodes, version = await asyncio.to_thread(self._list)
            self._nodes = nodes  # the baseline: not a change
            self._loop = asyncio.get_running_loop()
            self._watch_thread = threading.Thread(target=self._watch_forever, args=(version,),
                                                  name="ff-node-watch", daemon=True)
            self._watch_thread.start()

    def _list(self) -> tuple[dict[str, sizing.Node], str]:
        listed = self.api.list_node(label_selector=self.label_selector)
        nodes = (node_of(self._json(item)) for item in listed.items)
        return {n.name: n for n in nodes if n.name}, listed.metadata.resource_version

    def _watch_forever(self, version: str | None) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        while not self._closed.is_set():
            try:
                if version is None:  # (re)list: whatever the watch missed is in the list
                    nodes, version = self._list()
                    self._publish(self._replace, nodes)
                self._watcher = watch.Watch()
                for event in self._watcher.stream(self.api.list_node, label_selector=self.label_selector,
                                                  resource_version=version, timeout_seconds=30,
                                                  allow_watch_bookmarks=True):
                    if self._closed.is_set():
                        break
                    obj = event["object"]
                    raw = obj if isinstance(obj, dict) else self._json(obj)
                    if event["type"] == "ERROR":
                        if raw.get("code") == 410:
                            version = None  # too old: list again
                            break
                        raise RuntimeError(f"watch error: {raw.get('message')}")
                    version = (raw.get("metadata") or {}).get("resourceVersion") or version
                    if event["type"] != "BOOKMARK":
                        self._publish(self._apply, event["type"], node_of(raw))
            except ApiException as exc:
                if exc.status == 410:  # the client reports an expired watch as an exception
                    version = None
                    continue
                log.warning("nodes.watch_failed", error=f"{exc.status} {exc.reason}")
                version = None
                self._closed.wait(1.0)
            except Exception as exc:  # the API server went away: list again once it is back
                if self._closed.is_set():
                    return
                log.warning("nodes.watch_failed", error=repr(exc))
                version = None
                self._closed.wait(1.0)

    def _json(self, obj: Any) -> dict[str, Any]:
        return self.api.api_client.sanitize_for_serialization(obj)

    def _publish(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on the event loop, in the order the watch saw things."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _replace(self, nodes: dict[str, sizing.Node]) -> None:
        if nodes != self._nodes:
            self._nodes = nodes
            self._changed.set()

    def _apply(self, kind: str, node: sizing.Node) -> None:
        if not node.name:
            return
        if kind == "DELETED":
            if self._nodes.pop(node.name, None) is not None:
                self._changed.set()
        elif self._nodes.get(node.name) != node:
            self._nodes[node.name] = node
            self._changed.set()


def _pools(node: sizing.Node) -> dict[str, int]:
    """The counts a node's annotation names; one that does not parse is replaced."""
    text = node.annotations.get(sizing.ANNOTATION)
    if text is None:
        return {}
    try:
        return sizing.parse_annotation(text)
    except ValueError as exc:
        log.warning("nodes.annotation_replaced", node=node.name, annotation=text, error=str(exc))
        return {}

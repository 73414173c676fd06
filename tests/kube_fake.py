"""An in-test Kubernetes API server for driving the real ``kubernetes`` client.

``FakeKube`` is a real HTTP/1.1 server on 127.0.0.1 (ephemeral port, background
threads) that speaks the subset of the core/v1 API that FlowForge's Pod runtime
and pool manager use: Pods (create, get, list, watch, patch, replace, delete,
log) and Nodes (seeded by the test; get, list, watch, patch, replace, delete).

It plays three roles, all behind one lock:

* the **apiserver**: defaulting, validation, resourceVersions from one global
  counter, a bounded watch history (so a test can provoke ``410 Expired``),
  label/field selectors, graceful deletion, JSON/merge/strategic-merge patches
  and ``Status`` objects for every error;
* the **kubelet/scheduler**: helpers such as :meth:`FakeKube.run`,
  :meth:`FakeKube.oom` or :meth:`FakeKube.evict` move a pod through the status
  JSON a real kubelet reports, and append container log lines;
* an optional **automatic mode**: ``fake.behaviour = fake.by_image()`` scripts
  every new pod from its image (``test/exit:3``, ``test/oom``, ...).

Typical use::

    with FakeKube() as fake:
        api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(fake.client_config()))
        api.create_namespaced_pod("default", body)
        fake.succeed("my-pod", logs="done")
        assert fake.created["my-pod"]["spec"]["containers"][0]["resources"] == {...}

Times are wall-clock; all delays (behaviour steps, grace periods,
activeDeadlineSeconds) run on one timer thread, never as sleeps in requests.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import heapq
import itertools
import json
import random
import re
import select
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import kubernetes.client

__all__ = ["ApiError", "FakeKube", "RecordedDelete", "RecordedRequest"]

# How often blocked streams re-check for a vanished client or a deadline.
_POLL_SECONDS = 0.2
# Generated-name suffix alphabet and length, as the apiserver's SimpleNameGenerator.
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_KUBELET_VERSION = "v1.31.0"


# ---------------------------------------------------------------------------
# Small helpers: time, ids, images
# ---------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def rfc3339(t: datetime | None = None) -> str:
    """Second-precision RFC 3339, as metav1.Time serialises."""
    return (t or _utcnow()).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339nano(t: datetime) -> str:
    """RFC 3339 with trailing-zero-trimmed fraction, as kubelet log timestamps."""
    frac = f"{t.microsecond:06d}000".rstrip("0")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def _container_id() -> str:
    return "containerd://" + uuid.uuid4().hex + uuid.uuid4().hex


def qualified_image(image: str) -> str:
    """The fully qualified reference a container runtime reports (docker.io/library/x:latest)."""
    name, digest = (image.split("@", 1) + [""])[:2]
    tag = "latest"
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = "docker.io/library/" + name
    elif "." not in first and ":" not in first and first != "localhost":
        name = "docker.io/" + name
    return f"{name}@{digest}" if digest else f"{name}:{tag}"


def _image_id(image: str) -> str:
    repo = qualified_image(image).split("@", 1)[0].rsplit(":", 1)[0]
    return f"{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def _pull_policy(image: str) -> str:
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.rsplit(":", 1)[1] if ":" in last else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


# ---------------------------------------------------------------------------
# Status objects and API errors
# ---------------------------------------------------------------------------


def status_object(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    """A metav1.Status failure body, exactly as the apiserver serialises one."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason}
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


class ApiError(Exception):
    """An API failure; the HTTP layer turns it into a ``Status`` response."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        return status_object(self.code, self.reason, self.message, self.details)

    @classmethod
    def not_found(cls, resource: str, name: str) -> ApiError:
        return cls(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})

    @classmethod
    def already_exists(cls, resource: str, name: str) -> ApiError:
        return cls(409, "AlreadyExists", f'{resource} "{name}" already exists',
                   {"name": name, "kind": resource})

    @classmethod
    def conflict(cls, resource: str, name: str, why: str) -> ApiError:
        return cls(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": {why}',
                   {"name": name, "kind": resource})

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)

    @classmethod
    def invalid(cls, kind: str, name: str, causes: list[dict]) -> ApiError:
        """422 Invalid; each cause is {"reason", "message", "field"} as field.ErrorList renders."""
        rendered = [f"{c['field']}: {c['message']}" for c in causes]
        summary = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
        return cls(422, "Invalid", f'{kind} "{name}" is invalid: {summary}',
                   {"name": name, "kind": kind, "causes": causes})

    @classmethod
    def expired(cls, requested: int, oldest: int) -> ApiError:
        return cls(410, "Expired", f"too old resource version: {requested} ({oldest})")


def _required(field_path: str, detail: str = "") -> dict:
    return {"reason": "FieldValueRequired", "message": "Required value" + (f": {detail}" if detail else ""),
            "field": field_path}


def _invalid_value(field_path: str, value: Any, detail: str) -> dict:
    return {"reason": "FieldValueInvalid", "message": f"Invalid value: {json.dumps(value)}: {detail}",
            "field": field_path}


# ---------------------------------------------------------------------------
# Validation of names and labels (the apimachinery rules that bite in practice)
# ---------------------------------------------------------------------------

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                  "'-' or '.', and must start and end with an alphanumeric character")
_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
              "and must start and end with an alphanumeric character")


def _name_causes(name: str, path: str = "metadata.name") -> list[dict]:
    if len(name) > 253:
        return [_invalid_value(path, name, "must be no more than 253 characters")]
    if not _DNS1123_SUBDOMAIN.match(name):
        return [_invalid_value(path, name, _SUBDOMAIN_MSG)]
    return []


def _label_causes(labels: Any, path: str) -> list[dict]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [_invalid_value(path, labels, "must be a map of string to string")]
    causes = []
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (prefix and not _DNS1123_SUBDOMAIN.match(prefix)) or len(name) > 63 \
                or not _QUALIFIED_NAME.match(name):
            causes.append(_invalid_value(path, key, "name part must consist of alphanumeric characters, "
                                         "'-', '_' or '.', and must start and end with an alphanumeric "
                                         "character"))
        if path.endswith("labels"):
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                causes.append(_invalid_value(path, value, "a valid label must be an empty string or "
                                             "consist of alphanumeric characters, '-', '_' or '.', and "
                                             "must start and end with an alphanumeric character"))
        elif not isinstance(value, str):
            causes.append(_invalid_value(f"{path}[{key}]", value, "must be a string"))
    return causes


# ---------------------------------------------------------------------------
# Label and field selectors
# ---------------------------------------------------------------------------

_SEL_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_SEL_SET = re.compile(rf"^(?P<key>{_SEL_KEY})\s+(?P<op>in|notin)\s*\((?P<vals>[^()]*)\)$")
_SEL_EQ = re.compile(rf"^(?P<key>{_SEL_KEY})\s*(?P<op>==|=|!=)\s*(?P<val>[-A-Za-z0-9_.]*)$")
_SEL_EXISTS = re.compile(rf"^(?P<neg>!?)\s*(?P<key>{_SEL_KEY})$")


@dataclass(frozen=True)
class Requirement:
    """One label-selector requirement: key op values."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        return present if self.op == "exists" else not present


def _split_terms(text: str) -> list[str]:
    """Split a selector on commas that are not inside parentheses."""
    terms, depth, current = [], 0, []
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(ch)
    terms.append("".join(current))
    return [t.strip() for t in terms if t.strip()]


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse ``a=b,c!=d,e in (x,y),f notin (z),g,!h``; 400 BadRequest on anything else."""
    requirements = []
    for term in _split_terms(text or ""):
        if m := _SEL_SET.match(term):
            values = tuple(v.strip() for v in m["vals"].split(",") if v.strip())
            requirements.append(Requirement(m["key"], m["op"], values))
        elif m := _SEL_EQ.match(term):
            op = "=" if m["op"] in ("=", "==") else "!="
            requirements.append(Requirement(m["key"], op, (m["val"],)))
        elif m := _SEL_EXISTS.match(term):
            requirements.append(Requirement(m["key"], "!" if m["neg"] else "exists"))
        else:
            raise ApiError.bad_request(f"unable to parse requirement: <nil>: Invalid value: {term!r}: "
                                       "found unexpected token")
    return requirements


# Fields each resource supports in fieldSelector, mapped to their JSON path.
_FIELD_PATHS = {
    "pods": {
        "metadata.name": ("metadata", "name"), "metadata.namespace": ("metadata", "namespace"),
        "spec.nodeName": ("spec", "nodeName"), "spec.restartPolicy": ("spec", "restartPolicy"),
        "spec.schedulerName": ("spec", "schedulerName"),
        "spec.serviceAccountName": ("spec", "serviceAccountName"),
        "status.phase": ("status", "phase"), "status.podIP": ("status", "podIP"),
        "status.nominatedNodeName": ("status", "nominatedNodeName"),
    },
    "nodes": {"metadata.name": ("metadata", "name"), "spec.unschedulable": ("spec", "unschedulable")},
}


def _field_value(obj: dict, path: tuple[str, ...]) -> str:
    value: Any = obj
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Selector:
    """A label selector and a field selector over one resource."""

    resource: str
    labels: tuple[Requirement, ...] = ()
    fields: tuple[tuple[tuple[str, ...], str, str], ...] = ()  # (path, op, value)

    @classmethod
    def parse(cls, resource: str, label_selector: str | None, field_selector: str | None) -> Selector:
        fields = []
        for term in _split_terms(field_selector or ""):
            m = re.match(r"^([^=!]+?)\s*(==|=|!=)\s*(.*)$", term)
            if not m:
                raise ApiError.bad_request(f"invalid selector: '{field_selector}'; can't understand '{term}'")
            name, op, value = m.groups()
            if name not in _FIELD_PATHS[resource]:
                raise ApiError.bad_request(f'field label not supported: {name}')
            fields.append((_FIELD_PATHS[resource][name], "!=" if op == "!=" else "=", value))
        return cls(resource, tuple(parse_label_selector(label_selector)), tuple(fields))

    def matches(self, obj: dict) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        if not all(r.matches(labels) for r in self.labels):
            return False
        for path, op, value in self.fields:
            if (_field_value(obj, path) == value) != (op == "="):
                return False
        return True


# ---------------------------------------------------------------------------
# Patches: RFC 7386 merge patch, strategic merge patch (subset), RFC 6902 JSON patch
# ---------------------------------------------------------------------------


class PatchError(ValueError):
    """A JSON patch that does not apply; answered as 422 Invalid."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes a key, anything else replaces."""
    return _merge(target, patch, strategic=False)


# patchMergeKey of the core/v1 lists a strategic merge patch merges instead of replacing.
_STRATEGIC_MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
    "volumes": "name", "volumeMounts": "mountPath", "ports": "containerPort", "conditions": "type",
    "imagePullSecrets": "name", "addresses": "type",
}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Merge patch plus list merging by patchMergeKey and ``$patch: delete`` list items."""
    return _merge(target, patch, strategic=True)


def _merge(target: Any, patch: Any, *, strategic: bool) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif strategic and key in _STRATEGIC_MERGE_KEYS and isinstance(value, list) \
                and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, _STRATEGIC_MERGE_KEYS[key])
        else:
            result[key] = _merge(result.get(key), value, strategic=strategic)
    return result


def _merge_list(current: list, patch: list, key: str) -> list:
    if not all(isinstance(item, dict) and key in item for item in patch):
        return copy.deepcopy(patch)
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        index = next((i for i, c in enumerate(merged) if isinstance(c, dict) and c.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(strategic_merge_patch({}, item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve_parent(doc: Any, tokens: list[str], path: str) -> tuple[Any, str]:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise PatchError(f"jsonpatch: path {path!r} does not exist: missing {token!r}")
    return node, tokens[-1]


def _pointer_get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent, last = _resolve_parent(doc, tokens, path)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"jsonpatch: path {path!r} does not exist")


def _pointer_add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent, last = _resolve_parent(doc, tokens, path)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list) and (last == "-" or (last.isdigit() and int(last) <= len(parent))):
        parent.insert(len(parent) if last == "-" else int(last), value)
    else:
        raise PatchError(f"jsonpatch add operation does not apply: doc is missing path: {path!r}")
    return doc


def _pointer_remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    parent, last = _resolve_parent(doc, tokens, path)
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise PatchError(f"jsonpatch remove operation does not apply: doc is missing path: {path!r}")
    return doc


def json_patch(doc: Any, operations: list) -> Any:
    """RFC 6902 (add, remove, replace, test, move, copy) on a copy of ``doc``."""
    doc = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict) or "path" not in op:
            raise PatchError(f"invalid JSON patch operation {op!r}")
        kind, path = op.get("op"), op["path"]
        if kind == "add":
            doc = _pointer_add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _pointer_remove(doc, path)
        elif kind == "replace":
            _pointer_get(doc, path)
            doc = _pointer_add(_pointer_remove(doc, path), path, copy.deepcopy(op.get("value")))
        elif kind == "test":
            if _pointer_get(doc, path) != op.get("value"):
                raise PatchError(f"testing value {path!r} failed")
        elif kind in ("move", "copy"):
            value = copy.deepcopy(_pointer_get(doc, op.get("from", "")))
            if kind == "move":
                doc = _pointer_remove(doc, op["from"])
            doc = _pointer_add(doc, path, value)
        else:
            raise PatchError(f"Unexpected kind: {kind!r}")
    return doc


# ---------------------------------------------------------------------------
# The kubelet's view of a pod: containers, their states and logs
# ---------------------------------------------------------------------------


@dataclass
class _Container:
    """Simulated runtime state of one container, rendered as a ContainerStatus."""

    name: str
    image: str
    init: bool = False
    sidecar: bool = False  # an init container with restartPolicy: Always
    state: dict = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    ready: bool = False
    started: bool = False
    container_id: str | None = None
    started_at: str | None = None
    restart_count: int = 0
    last_state: dict = field(default_factory=dict)
    logs: list[tuple[datetime, str]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def terminated(self) -> bool:
        return "terminated" in self.state

    def wait(self, reason: str, message: str | None = None) -> None:
        self.state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        self.ready = self.started = False

    def start(self) -> None:
        self.container_id = _container_id()
        self.started_at = rfc3339()
        self.state = {"running": {"startedAt": self.started_at}}
        self.started = True
        self.ready = True

    def terminate(self, exit_code: int, reason: str, message: str | None = None) -> None:
        term: dict = {"exitCode": exit_code, "reason": reason}
        if message:
            term["message"] = message
        if self.container_id is not None:
            term.update(startedAt=self.started_at, finishedAt=rfc3339(), containerID=self.container_id)
        self.state = {"terminated": term}
        self.ready = self.started = False

    def kill(self, exit_code: int) -> None:
        """The kubelet kills the pod: running containers exit ``exit_code``; containers that never
        started are reported as the kubelet reports them for a terminal pod."""
        if self.running:
            self.terminate(exit_code, "Error")
        elif not self.terminated:
            self.terminate(137, "ContainerStatusUnknown",
                           "The container could not be located when the pod was terminated")

    def status_json(self) -> dict:
        created = self.container_id is not None
        status = {"name": self.name,
                  "image": qualified_image(self.image) if created else self.image,
                  "imageID": _image_id(self.image) if created else "",
                  "ready": self.ready, "restartCount": self.restart_count, "started": self.started,
                  "state": copy.deepcopy(self.state), "lastState": copy.deepcopy(self.last_state)}
        if created:
            status["containerID"] = self.container_id
        return status


@dataclass
class _PodSim:
    """Everything the fake kubelet knows about one pod instance (by uid)."""

    uid: str
    containers: dict[str, _Container]
    init_containers: dict[str, _Container]
    gone: bool = False

    @classmethod
    def for_pod(cls, pod: dict) -> _PodSim:
        spec = pod["spec"]
        return cls(
            uid=pod["metadata"]["uid"],
            containers={c["name"]: _Container(c["name"], c.get("image", "")) for c in spec["containers"]},
            init_containers={c["name"]: _Container(c["name"], c.get("image", ""), init=True,
                                                   sidecar=c.get("restartPolicy") == "Always")
                             for c in spec.get("initContainers") or []},
        )

    def all(self) -> Iterator[_Container]:
        yield from self.init_containers.values()
        yield from self.containers.values()

    def find(self, name: str) -> _Container | None:
        return self.containers.get(name) or self.init_containers.get(name)

    def running_main(self) -> list[_Container]:
        return [c for c in self.containers.values() if c.running]


_CONDITION_ORDER = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                    "PodScheduled", "DisruptionTarget"]


def _set_condition(pod: dict, ctype: str, status: str, reason: str | None = None,
                   message: str | None = None) -> None:
    """Upsert a pod condition; lastTransitionTime only moves when status changes."""
    conditions = pod["status"].setdefault("conditions", [])
    old = next((c for c in conditions if c["type"] == ctype), None)
    cond = {"type": ctype, "status": status, "lastProbeTime": None,
            "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == status else rfc3339()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    conditions[:] = [c for c in conditions if c["type"] != ctype] + [cond]
    order = {t: i for i, t in enumerate(_CONDITION_ORDER)}
    conditions.sort(key=lambda c: order.get(c["type"], len(order)))


def _render_container_statuses(pod: dict, sim: _PodSim) -> None:
    """Write containerStatuses/initContainerStatuses, sorted by name as the kubelet does."""
    pod["status"]["containerStatuses"] = [c.status_json() for _, c in sorted(sim.containers.items())]
    if sim.init_containers:
        pod["status"]["initContainerStatuses"] = [c.status_json() for c in sim.init_containers.values()]


def _set_readiness(pod: dict, sim: _PodSim) -> None:
    """Ready/ContainersReady from container readiness, with the kubelet's reasons."""
    if pod["status"].get("phase") in ("Succeeded", "Failed"):
        for ctype in ("Ready", "ContainersReady"):
            _set_condition(pod, ctype, "False", "PodCompleted")
        _set_condition(pod, "PodReadyToStartContainers", "False")
        return
    unready = sorted(c.name for c in sim.containers.values() if not c.ready)
    if unready:
        message = f"containers with unready status: [{' '.join(unready)}]"
        for ctype in ("Ready", "ContainersReady"):
            _set_condition(pod, ctype, "False", "ContainersNotReady", message)
    else:
        for ctype in ("Ready", "ContainersReady"):
            _set_condition(pod, ctype, "True")


def _qos_class(spec: dict) -> str:
    """Guaranteed / Burstable / BestEffort from cpu and memory requests and limits."""
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    any_set, guaranteed = False, True
    for c in containers:
        resources = c.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        for res in ("cpu", "memory"):
            if res in requests or res in limits:
                any_set = True
            if res not in limits or requests.get(res, limits[res]) != limits[res]:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _default_pod_spec(spec: dict) -> None:
    """Apply the apiserver's defaulting and admission defaults to a pod spec in place."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    tolerations = spec.setdefault("tolerations", [])
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(t.get("key") == key for t in tolerations):
            tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute",
                                "tolerationSeconds": 300})
    for c in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("imagePullPolicy", _pull_policy(c.get("image", "")))
        resources = c.setdefault("resources", {})
        limits = resources.get("limits") or {}
        if limits:  # requests default to limits, per resource
            requests = resources.setdefault("requests", {})
            for res, value in limits.items():
                requests.setdefault(res, value)


def _lines(logs: Any) -> list[str]:
    """Accept None, a string (split on newlines) or an iterable of lines."""
    if logs is None:
        return []
    if isinstance(logs, str):
        return logs.splitlines()
    return [str(line) for line in logs]


# ---------------------------------------------------------------------------
# Event history and HTTP plumbing
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    rv: int
    resource: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict  # never mutated after commit
    prev: dict | None


@dataclass
class RecordedRequest:
    """One HTTP request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def token(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None


@dataclass
class RecordedDelete:
    """A pod/node DELETE: the grace period the server applied and where it came from."""

    resource: str
    namespace: str | None
    name: str
    grace_period_seconds: int | None  # as requested (None: not given)
    source: str  # "body", "query" or "default"
    effective_grace_seconds: int  # after defaulting and the unscheduled/terminal shortcut
    options: dict  # the DeleteOptions the server decoded


@dataclass
class _Json:
    code: int
    body: Any


@dataclass
class _Text:
    code: int
    text: str


@dataclass
class _Stream:
    content_type: str
    chunks: Callable[[Callable[[], bool]], Iterator[bytes]]  # given client_gone()


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so server_close() joins every handler thread
    block_on_close = True
    fake: FakeKube


class _Handler(BaseHTTPRequestHandler):
    """Parses requests, hands them to FakeKube._handle and writes the answer."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body are separate writes: without this, Nagle + delayed ACK add ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, False)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            response = self.server.fake._handle(method, unquote(url.path), query, raw, headers)
        except ApiError as err:
            response = _Json(err.code, err.status())
        except Exception as exc:  # noqa: BLE001 - a bug in the fake: answer 500, keep serving
            self.server.fake._record_error(exc)
            response = _Json(500, status_object(500, "InternalError", f"fake apiserver bug: {exc!r}"))
        if isinstance(response, _Stream):
            self._send_stream(response)
        elif isinstance(response, _Text):
            self._send(response.code, "text/plain", response.text.encode())
        else:
            self._send(response.code, "application/json", json.dumps(response.body).encode())

    def _send(self, code: int, content_type: str, payload: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_stream(self, stream: _Stream) -> None:
        """Chunked transfer until the producer ends, the client leaves or the server stops.

        The connection stays keep-alive, as with a real apiserver: with ``Connection: close``
        http.client detaches the socket from the connection and ``Watch.stop()`` (which shuts
        that socket down) could no longer interrupt the stream."""
        fake = self.server.fake
        fake._stream_count(+1)
        chunks = stream.chunks(self._client_gone)
        try:
            self.send_response(200)
            self.send_header("Content-Type", stream.content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in chunks:
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True  # client went away mid-stream
        except Exception as exc:  # noqa: BLE001 - a bug in the fake: end the stream, record it
            self.close_connection = True
            fake._record_error(exc)
        finally:
            chunks.close()
            fake._stream_count(-1)

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True


_ROUTES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$"), "pods"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)$"), "pod"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$"), "pod_log"),
    (re.compile(r"^/api/v1/pods$"), "all_pods"),
    (re.compile(r"^/api/v1/nodes$"), "nodes"),
    (re.compile(r"^/api/v1/nodes/(?P<name>[^/]+)$"), "node"),
    (re.compile(r"^/version/?$"), "version"),
    (re.compile(r"^/(?:healthz|readyz|livez)$"), "health"),
]

_KINDS = {"pods": "Pod", "nodes": "Node"}
_KUBELET_ACTIONS = frozenset({
    "schedule", "run", "succeed", "fail", "oom", "evict", "preempt", "node_lost", "image_pull_error",
    "unschedulable", "deadline_exceeded", "append_log",
})
_TEST_IMAGE = re.compile(r"(?:^|/)test/(?P<kind>[a-z-]+)(?::(?P<arg>[^@/]+))?(?:@.*)?$")

Behaviour = Callable[[dict], list]


# ---------------------------------------------------------------------------
# FakeKube
# ---------------------------------------------------------------------------


class FakeKube:
    """A fake Kubernetes apiserver + scheduler + kubelet for tests. See the module docstring."""

    def __init__(self, *, history_size: int = 1000, bookmark_interval: float = 1.0,
                 token: str | None = None, sigterm_exit_delay: float | None = 0.0):
        """
        :param history_size: watch events retained; a watch from an older resourceVersion gets 410.
        :param bookmark_interval: seconds between BOOKMARK events for allowWatchBookmarks watches.
        :param token: when set, requests must carry ``Authorization: Bearer <token>`` (else 401).
        :param sigterm_exit_delay: how long a simulated container takes to exit after SIGTERM on a
            graceful delete; ``None`` means it ignores SIGTERM and is SIGKILLed (137) at the end of
            the grace period.
        """
        self.history_size = history_size
        self.bookmark_interval = bookmark_interval
        self.token = token
        self.sigterm_exit_delay = sigterm_exit_delay
        self.behaviour: Behaviour | None = None
        self.requests: list[RecordedRequest] = []
        self.created: dict[str, dict] = {}
        self.deletions: list[RecordedDelete] = []
        self.errors: list[str] = []  # exceptions raised by timers/behaviour scripts

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._timer_cv = threading.Condition(self._lock)
        self._rv = 0
        self._floor = 0  # highest resourceVersion dropped from the history
        self._history: deque[_Event] = deque()
        self._objects: dict[tuple[str, str, str], dict] = {}
        self._sims: dict[tuple[str, str], _PodSim] = {}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._ip_seq = itertools.count(2)
        self._connections: set[socket.socket] = set()
        self._streams = 0
        self._stopping = False
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FakeKube:
        """Bind 127.0.0.1:0 and serve in background threads."""
        if self._server is not None:
            return self
        self._stopping = False
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                             name="fakekube-http", daemon=True),
            threading.Thread(target=self._timer_loop, name="fakekube-timers", daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """End watch/log streams cleanly, close every connection and join every thread."""
        if self._server is None:
            return
        with self._lock:
            self._stopping = True
            self._changed.notify_all()
            self._timer_cv.notify_all()
            self._changed.wait_for(lambda: self._streams == 0, timeout=2.0)
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._server, self._threads = None, []

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeKube is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def client_config(self, token: str | None = None) -> kubernetes.client.Configuration:
        """A client Configuration for this server, with a bearer token (``self.token`` by default)."""
        config = kubernetes.client.Configuration(host=self.url)
        config.verify_ssl = False
        config.api_key = {"authorization": token or self.token or "fake-token"}
        config.api_key_prefix = {"authorization": "Bearer"}
        return config

    # -- inspection helpers for tests ---------------------------------------

    def pod(self, name: str, namespace: str | None = None) -> dict:
        """A copy of the current pod JSON (KeyError when absent)."""
        with self._lock:
            return copy.deepcopy(self._find_pod(name, namespace))

    def pods(self, namespace: str | None = None) -> list[dict]:
        with self._lock:
            return [copy.deepcopy(o) for (r, ns, _), o in sorted(self._objects.items())
                    if r == "pods" and namespace in (None, ns)]

    def node(self, name: str) -> dict:
        with self._lock:
            return copy.deepcopy(self._get("nodes", "", name))

    def logs(self, name: str, container: str | None = None, namespace: str | None = None) -> list[str]:
        """Log lines recorded for a pod's container (its first container by default)."""
        with self._lock:
            pod = self._find_pod(name, namespace)
            sim = self._sim_of(pod)
            ctr = sim.find(container or pod["spec"]["containers"][0]["name"])
            return [line for _, line in ctr.logs] if ctr else []

    def requests_to(self, method: str, path_prefix: str = "") -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    @property
    def open_streams(self) -> int:
        """Watch and log-follow responses currently streaming."""
        with self._lock:
            return self._streams

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate()`` holds; False on timeout. It is re-evaluated after every
        change in the fake and at least every 20 ms (so it may watch test-side state too). It
        runs under the fake's lock: it must not call the API over HTTP."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.02))
            return True

    def wait_for_phase(self, name: str, phase: str, namespace: str | None = None,
                       timeout: float = 5.0) -> dict:
        """Wait for a pod to reach ``phase``; returns the pod JSON or raises TimeoutError."""
        def reached() -> bool:
            try:
                return self._find_pod(name, namespace)["status"].get("phase") == phase
            except KeyError:
                return False
        if not self.wait_for(reached, timeout):
            raise TimeoutError(f"pod {name} did not reach {phase} within {timeout}s")
        return self.pod(name, namespace)

    def wait_gone(self, name: str, namespace: str | None = None, timeout: float = 5.0) -> None:
        def gone() -> bool:
            try:
                self._find_pod(name, namespace)
                return False
            except KeyError:
                return True
        if not self.wait_for(gone, timeout):
            raise TimeoutError(f"pod {name} still exists after {timeout}s")

    # -- nodes (seeded by the test) -----------------------------------------

    def add_node(self, name: str, *, labels: dict | None = None, annotations: dict | None = None,
                 allocatable: dict | None = None, capacity: dict | None = None, ready: bool = True,
                 taints: list[dict] | None = None, unschedulable: bool = False) -> dict:
        """Register a Node as a kubelet would (ADDED event). Quantities are strings."""
        allocatable = {k: str(v) for k, v in (allocatable or
                       {"cpu": "4", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"}).items()}
        with self._lock:
            if ("nodes", "", name) in self._objects:
                raise ValueError(f"node {name} already exists")
            index = sum(1 for r, _, _ in self._objects if r == "nodes")
            spec: dict = {"podCIDR": f"10.244.{index}.0/24", "podCIDRs": [f"10.244.{index}.0/24"]}
            if taints:
                spec["taints"] = copy.deepcopy(taints)
            if unschedulable:
                spec["unschedulable"] = True
            node = {
                "kind": "Node", "apiVersion": "v1",
                "metadata": {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": rfc3339(),
                             "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                        "kubernetes.io/arch": "amd64", **(labels or {})},
                             "annotations": dict(annotations or {})},
                "spec": spec,
                "status": {
                    "capacity": dict(capacity or allocatable), "allocatable": allocatable,
                    "conditions": self._node_conditions(ready),
                    "addresses": [{"type": "InternalIP", "address": f"10.0.0.{10 + index}"},
                                  {"type": "Hostname", "address": name}],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                    "nodeInfo": {"machineID": uuid.uuid4().hex, "systemUUID": str(uuid.uuid4()),
                                 "bootID": str(uuid.uuid4()), "kernelVersion": "6.1.0-fake",
                                 "osImage": "Debian GNU/Linux 12 (bookworm)",
                                 "containerRuntimeVersion": "containerd://1.7.20",
                                 "kubeletVersion": _KUBELET_VERSION, "kubeProxyVersion": _KUBELET_VERSION,
                                 "operatingSystem": "linux", "architecture": "amd64"},
                },
            }
            self._commit("nodes", node, "ADDED")
            return copy.deepcopy(node)

    def set_node_ready(self, name: str, ready: bool) -> dict:
        """Flip the node's Ready condition (as the node lifecycle controller would)."""
        with self._lock:
            node = copy.deepcopy(self._get("nodes", "", name))
            node["status"]["conditions"] = self._node_conditions(ready)
            self._commit("nodes", node, "MODIFIED")
            return copy.deepcopy(node)

    def remove_node(self, name: str) -> None:
        with self._lock:
            self._commit("nodes", copy.deepcopy(self._get("nodes", "", name)), "DELETED")

    def lose_node(self, name: str) -> None:
        """Node goes unreachable: NotReady + unreachable NoExecute taint; its pods are deleted."""
        with self._lock:
            node = copy.deepcopy(self._get("nodes", "", name))
            node["status"]["conditions"] = self._node_conditions(False)
            node["spec"].setdefault("taints", []).append(
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": rfc3339()})
            self._commit("nodes", node, "MODIFIED")
            victims = [o for (r, _, _), o in self._objects.items()
                       if r == "pods" and o["spec"].get("nodeName") == name
                       and o["status"].get("phase") not in ("Succeeded", "Failed")]
            for pod in victims:
                self.node_lost(pod["metadata"]["name"], namespace=pod["metadata"]["namespace"])

    @staticmethod
    def _node_conditions(ready: bool) -> list[dict]:
        now = rfc3339()
        conditions = [
            {"type": t, "status": "False", "reason": f"KubeletHas{r}", "message": m,
             "lastHeartbeatTime": now, "lastTransitionTime": now}
            for t, r, m in [("MemoryPressure", "SufficientMemory", "kubelet has sufficient memory available"),
                            ("DiskPressure", "NoDiskPressure", "kubelet has no disk pressure"),
                            ("PIDPressure", "SufficientPID", "kubelet has sufficient PID available")]
        ]
        if ready:
            conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                               "message": "kubelet is posting ready status",
                               "lastHeartbeatTime": now, "lastTransitionTime": now})
        else:
            conditions.append({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                               "message": "Kubelet stopped posting node status.",
                               "lastHeartbeatTime": now, "lastTransitionTime": now})
        return conditions

    # -- the simulated scheduler and kubelet -------------------------------

    def schedule(self, name: str, node: str | None = None, *, namespace: str | None = None) -> dict:
        """Bind to ``node`` (PodScheduled=True, spec.nodeName), then the kubelet acknowledges the
        pod: startTime, hostIP and containers waiting in ContainerCreating. Two MODIFIED events.

        Without ``node``: the first seeded node (by name) that is Ready, schedulable, matches
        spec.nodeSelector and whose NoSchedule/NoExecute taints are tolerated; "node-1" when no
        node was seeded. When nodes exist but none fits, the pod is marked Unschedulable with
        the scheduler's message instead (and returned unscheduled)."""
        with self._lock:
            pod = self._pod_for_update(name, namespace)
            if pod["spec"].get("nodeName"):
                raise ValueError(f"pod {name} is already scheduled to {pod['spec']['nodeName']}")
            if node is None:
                node, why = self._pick_node(pod)
                if node is None:
                    return self.unschedulable(name, why, namespace=pod["metadata"]["namespace"])
            pod["spec"]["nodeName"] = node
            _set_condition(pod, "PodScheduled", "True")
            self._commit("pods", pod, "MODIFIED")
            return self._kubelet_acknowledge(copy.deepcopy(pod))

    def run(self, name: str, logs: Any = None, *, namespace: str | None = None) -> dict:
        """Start every container: phase Running, state.running.startedAt, ready. Schedules first
        when needed. ``logs`` (str, lines, or {container: lines}) are appended."""
        with self._lock:
            pod = self._pod_for_update(name, namespace, scheduled=True)
            sim = self._sim_of(pod)
            for ctr in sim.init_containers.values():
                if ctr.container_id is None:  # init containers run once, to completion
                    ctr.start()
                    if not ctr.sidecar:
                        ctr.terminate(0, "Completed")
            for ctr in sim.containers.values():
                if not ctr.running:
                    ctr.start()
            status = pod["status"]
            status["phase"] = "Running"
            if "podIP" not in status:
                ip = f"10.244.0.{next(self._ip_seq)}"
                status["podIP"], status["podIPs"] = ip, [{"ip": ip}]
            _set_condition(pod, "PodReadyToStartContainers", "True")
            _set_condition(pod, "Initialized", "True")
            _render_container_statuses(pod, sim)
            _set_readiness(pod, sim)
            self._append_logs(pod, sim, logs)
            return self._commit_copy(pod)

    def succeed(self, name: str, logs: Any = None, *, namespace: str | None = None) -> dict:
        """All containers exit 0 (terminated reason Completed): phase Succeeded, unless
        restartPolicy Always restarts them (CrashLoopBackOff), as a kubelet would."""
        with self._lock:
            pod, sim = self._running_pod(name, namespace)
            self._append_logs(pod, sim, logs)
            for ctr in sim.containers.values():
                self._exit(pod, ctr, 0, "Completed")
            return self._settle(pod, sim)

    def fail(self, name: str, exit_code: int = 1, logs: Any = None, *, container: str | None = None,
             message: str | None = None, namespace: str | None = None) -> dict:
        """One container (the first by default) exits ``exit_code`` with reason Error; the others
        exit 0. Phase Failed for restartPolicy Never; restarted per restartPolicy otherwise."""
        return self._exit_with(name, namespace, exit_code, "Error", logs, container, message)

    def oom(self, name: str, logs: Any = None, *, container: str | None = None,
            namespace: str | None = None) -> dict:
        """The container is OOM-killed: terminated reason OOMKilled, exitCode 137."""
        return self._exit_with(name, namespace, 137, "OOMKilled", logs, container, None)

    def evict(self, name: str, resource: str = "memory", *, namespace: str | None = None) -> dict:
        """Kubelet node-pressure eviction: phase Failed, reason Evicted, the kubelet's message,
        a DisruptionTarget condition (TerminationByKubelet) and containers killed (137)."""
        with self._lock:
            pod = self._pod_for_update(name, namespace, scheduled=True)
            sim = self._sim_of(pod)
            main = pod["spec"]["containers"][0]
            request = ((main.get("resources") or {}).get("requests") or {}).get(resource, "0")
            message = (f"The node was low on resource: {resource}. Threshold quantity: 100Mi, available: "
                       f"51200Ki. Container {main['name']} was using 1Gi, request is {request}, has larger "
                       f"consumption of {resource}. ")
            for ctr in sim.all():
                ctr.kill(137)
            pod["status"].update(phase="Failed", reason="Evicted", message=message)
            _set_condition(pod, "DisruptionTarget", "True", "TerminationByKubelet", message)
            _render_container_statuses(pod, sim)
            _set_readiness(pod, sim)
            return self._commit_copy(pod)

    def deadline_exceeded(self, name: str, *, namespace: str | None = None) -> dict:
        """activeDeadlineSeconds passed: phase Failed, reason DeadlineExceeded; containers are
        killed with SIGTERM (exit 143, reason Error)."""
        with self._lock:
            pod = self._pod_for_update(name, namespace, scheduled=True)
            sim = self._sim_of(pod)
            for ctr in sim.all():
                ctr.kill(143)
            pod["status"].update(phase="Failed", reason="DeadlineExceeded",
                                 message="Pod was active on the node longer than the specified deadline")
            _render_container_statuses(pod, sim)
            _set_readiness(pod, sim)
            return self._commit_copy(pod)

    def preempt(self, name: str, *, namespace: str | None = None) -> dict:
        """Scheduler preemption: DisruptionTarget (PreemptionByScheduler), then a graceful delete
        with the pod's terminationGracePeriodSeconds."""
        return self._disrupt(name, namespace, "PreemptionByScheduler",
                             "default-scheduler: preempting to accommodate a higher priority pod")

    def node_lost(self, name: str, *, namespace: str | None = None) -> dict:
        """The pod's node became unreachable: Ready=False, DisruptionTarget (DeletionByTaintManager),
        then deleted. The kubelet is gone, so container states are not updated."""
        with self._lock:
            pod = self._pod_for_update(name, namespace, scheduled=True)
            _set_condition(pod, "Ready", "False")  # MarkPodsNotReady flips only the status
            self._commit("pods", pod, "MODIFIED")
            return self._disrupt(name, pod["metadata"]["namespace"], "DeletionByTaintManager",
                                 "Taint manager: deleting due to NoExecute taint", kubelet_alive=False)

    def image_pull_error(self, name: str, reason: str = "ErrImagePull", *,
                         namespace: str | None = None) -> dict:
        """Containers stuck in state.waiting with ErrImagePull or ImagePullBackOff; phase Pending."""
        if reason not in ("ErrImagePull", "ImagePullBackOff"):
            raise ValueError("reason must be ErrImagePull or ImagePullBackOff")
        with self._lock:
            pod = self._pod_for_update(name, namespace, scheduled=True)
            sim = self._sim_of(pod)
            for ctr in sim.containers.values():
                ref = qualified_image(ctr.image)
                if reason == "ErrImagePull":
                    message = (f"rpc error: code = NotFound desc = failed to pull and unpack image \"{ref}\": "
                               f"failed to resolve reference \"{ref}\": {ref}: not found")
                else:
                    message = f'Back-off pulling image "{ctr.image}"'
                ctr.wait(reason, message)
            _render_container_statuses(pod, sim)
            _set_readiness(pod, sim)
            return self._commit_copy(pod)

    def unschedulable(self, name: str, message: str | None = None, *, namespace: str | None = None) -> dict:
        """The scheduler cannot place the pod: PodScheduled=False reason Unschedulable."""
        with self._lock:
            pod = self._pod_for_update(name, namespace)
            if pod["spec"].get("nodeName"):
                raise ValueError(f"pod {name} is already scheduled")
            n = max(1, sum(1 for r, _, _ in self._objects if r == "nodes"))
            message = message or (f"0/{n} nodes are available: {n} Insufficient cpu. preemption: 0/{n} nodes "
                                  f"are available: {n} No preemption victims found for incoming pod.")
            _set_condition(pod, "PodScheduled", "False", "Unschedulable", message)
            return self._commit_copy(pod)

    def append_log(self, name: str, lines: Any, *, container: str | None = None,
                   namespace: str | None = None) -> None:
        """Append log lines to a started container (the first container by default)."""
        with self._lock:
            pod = self._find_pod(name, namespace)
            sim = self._sim_of(pod)
            self._append_logs(pod, sim, {container: lines} if container else lines)

    # -- automatic mode ------------------------------------------------------

    def by_image(self, step: float = 0.01) -> Behaviour:
        """A behaviour scripting pods from their first ``test/...`` image:

        ``test/ok`` succeeds; ``test/exit:N`` fails with exit code N (0 succeeds); ``test/oom`` is
        OOM-killed; ``test/evict`` is evicted; ``test/pull-error`` gets ErrImagePull then
        ImagePullBackOff; ``test/unschedulable`` never schedules; ``test/sleep:S`` runs S seconds
        then succeeds; ``test/preempt`` is preempted while running; anything else runs forever.
        ``step`` is the delay between consecutive transitions.
        """
        def behaviour(pod: dict) -> list:
            images = [c.get("image", "") for c in pod["spec"]["containers"]]
            match = next((m for m in map(_TEST_IMAGE.search, images) if m), None)
            kind, arg = (match["kind"], match["arg"]) if match else ("", None)
            start = [(step, "schedule", {}), (step, "run", {"logs": [f"starting {images[0]}"]})]
            if kind == "ok" or (kind == "exit" and arg == "0"):
                return start + [(step, "succeed", {"logs": ["done"]})]
            if kind == "exit":
                return start + [(step, "fail", {"exit_code": int(arg or 1), "logs": [f"exit {arg}"]})]
            if kind == "oom":
                return start + [(step, "oom", {})]
            if kind == "evict":
                return start + [(step, "evict", {})]
            if kind == "preempt":
                return start + [(step, "preempt", {})]
            if kind == "pull-error":
                return [(step, "schedule", {}), (step, "image_pull_error", {"reason": "ErrImagePull"}),
                        (step, "image_pull_error", {"reason": "ImagePullBackOff"})]
            if kind == "unschedulable":
                return [(step, "unschedulable", {})]
            if kind == "sleep":
                return start + [(float(arg or 0), "succeed", {"logs": ["done"]})]
            return start
        return behaviour

    # -- internals: store, events, timers ------------------------------------

    def _commit(self, resource: str, obj: dict, event_type: str) -> None:
        """Store ``obj`` (which must not be mutated afterwards) and publish a watch event."""
        self._rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._rv)
        key = (resource, meta.get("namespace", ""), meta["name"])
        prev = self._objects.get(key)
        if event_type == "DELETED":
            self._objects.pop(key, None)
            sim = self._sims.pop((key[1], key[2]), None) if resource == "pods" else None
            if sim:
                sim.gone = True
        else:
            self._objects[key] = obj
        self._history.append(_Event(self._rv, resource, event_type, obj, prev))
        while len(self._history) > self.history_size:
            self._floor = self._history.popleft().rv
        self._changed.notify_all()

    def _commit_copy(self, pod: dict) -> dict:
        self._commit("pods", pod, "MODIFIED")
        return copy.deepcopy(pod)

    def _get(self, resource: str, namespace: str, name: str) -> dict:
        obj = self._objects.get((resource, namespace, name))
        if obj is None:
            raise ApiError.not_found(resource, name)
        return obj

    def _find_pod(self, name: str, namespace: str | None) -> dict:
        matches = [o for (r, ns, n), o in self._objects.items()
                   if r == "pods" and n == name and namespace in (None, ns)]
        if not matches:
            raise KeyError(f"no pod named {name!r}" + (f" in {namespace}" if namespace else ""))
        if len(matches) > 1:
            raise ValueError(f"pod name {name!r} exists in several namespaces; pass namespace=")
        return matches[0]

    def _sim_of(self, pod: dict) -> _PodSim:
        return self._sims[(pod["metadata"]["namespace"], pod["metadata"]["name"])]

    def _pod_for_update(self, name: str, namespace: str | None, scheduled: bool = False) -> dict:
        """A mutable copy of a live, non-terminal pod; schedules it first when asked."""
        pod = self._find_pod(name, namespace)
        phase = pod["status"].get("phase")
        if phase in ("Succeeded", "Failed"):
            raise ValueError(f"pod {name} is already {phase}")
        if scheduled and not pod["spec"].get("nodeName"):
            self.schedule(name, namespace=pod["metadata"]["namespace"])
            pod = self._find_pod(name, pod["metadata"]["namespace"])
            if not pod["spec"].get("nodeName"):
                why = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
                raise ValueError(f"pod {name} could not be scheduled: {why.get('message')}")
        return copy.deepcopy(pod)

    def _running_pod(self, name: str, namespace: str | None) -> tuple[dict, _PodSim]:
        pod = self._find_pod(name, namespace)
        if not self._sim_of(pod).running_main():
            self.run(name, namespace=pod["metadata"]["namespace"])
        pod = self._pod_for_update(name, pod["metadata"]["namespace"])
        return pod, self._sim_of(pod)

    def _kubelet_acknowledge(self, pod: dict) -> dict:
        """The kubelet sees the pod: startTime, hostIP, containers waiting to be created."""
        sim = self._sim_of(pod)
        status = pod["status"]
        host_ip = self._node_ip(pod["spec"]["nodeName"])
        status.update(hostIP=host_ip, hostIPs=[{"ip": host_ip}], startTime=rfc3339())
        waiting = "PodInitializing" if sim.init_containers else "ContainerCreating"
        for ctr in sim.all():
            ctr.wait(waiting)
        _set_condition(pod, "PodReadyToStartContainers", "False")
        if sim.init_containers:
            pending = " ".join(sim.init_containers)
            _set_condition(pod, "Initialized", "False", "ContainersNotInitialized",
                           f"containers with incomplete status: [{pending}]")
        else:
            _set_condition(pod, "Initialized", "True")
        _render_container_statuses(pod, sim)
        _set_readiness(pod, sim)
        self._commit("pods", pod, "MODIFIED")
        deadline = pod["spec"].get("activeDeadlineSeconds")
        if deadline is not None:
            self._after(float(deadline), self._pod_timer(pod, self._enforce_deadline))
        return copy.deepcopy(pod)

    def _pick_node(self, pod: dict) -> tuple[str | None, str]:
        """The scheduler's choice for ``pod``, or (None, the FailedScheduling message)."""
        nodes = [o for (r, _, _), o in sorted(self._objects.items()) if r == "nodes"]
        if not nodes:
            return "node-1", ""
        misfits: dict[str, int] = {}
        for node in nodes:
            why = _node_misfit(pod, node)
            if why is None:
                return node["metadata"]["name"], ""
            misfits[why] = misfits.get(why, 0) + 1
        n = len(nodes)
        detail = ", ".join(f"{count} {why}" for why, count in sorted(misfits.items()))
        return None, (f"0/{n} nodes are available: {detail}. preemption: 0/{n} nodes are available: "
                      f"{n} Preemption is not helpful for scheduling.")

    def _node_ip(self, node_name: str) -> str:
        node = self._objects.get(("nodes", "", node_name))
        for address in (node or {}).get("status", {}).get("addresses", []):
            if address["type"] == "InternalIP":
                return address["address"]
        return "10.0.0.2"

    def _append_logs(self, pod: dict, sim: _PodSim, logs: Any) -> None:
        if logs is None:
            return
        per_container = logs if isinstance(logs, dict) else {pod["spec"]["containers"][0]["name"]: logs}
        now = _utcnow()
        for cname, lines in per_container.items():
            ctr = sim.find(cname or pod["spec"]["containers"][0]["name"])
            if ctr is None:
                raise ValueError(f"pod {pod['metadata']['name']} has no container {cname!r}")
            ctr.logs.extend((now, line) for line in _lines(lines))
        self._changed.notify_all()

    def _exit_with(self, name: str, namespace: str | None, exit_code: int, reason: str, logs: Any,
                   container: str | None, message: str | None) -> dict:
        with self._lock:
            pod, sim = self._running_pod(name, namespace)
            self._append_logs(pod, sim, {container: logs} if container and logs is not None else logs)
            target = container or pod["spec"]["containers"][0]["name"]
            if target not in sim.containers:
                raise ValueError(f"pod {name} has no container {target!r}")
            self._exit(pod, sim.containers[target], exit_code, reason, message)
            if pod["spec"].get("restartPolicy") == "Never":
                for ctr in sim.containers.values():
                    if ctr.running:
                        ctr.terminate(0, "Completed")
            return self._settle(pod, sim)

    @staticmethod
    def _exit(pod: dict, ctr: _Container, exit_code: int, reason: str, message: str | None = None) -> None:
        """A container exits; the kubelet restarts it per restartPolicy (CrashLoopBackOff)."""
        ctr.terminate(exit_code, reason, message)
        policy = pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and exit_code != 0):
            ctr.last_state, ctr.restart_count = ctr.state, ctr.restart_count + 1
            ctr.wait("CrashLoopBackOff", f"back-off 10s restarting failed container={ctr.name} "
                     f"pod={pod['metadata']['name']}_{pod['metadata']['namespace']}({pod['metadata']['uid']})")

    def _settle(self, pod: dict, sim: _PodSim) -> dict:
        """Derive the phase once containers changed: terminal when every container terminated."""
        mains = list(sim.containers.values())
        if all(c.terminated for c in mains):
            failed = any(c.state["terminated"]["exitCode"] != 0 for c in mains)
            pod["status"]["phase"] = "Failed" if failed else "Succeeded"
            for ctr in sim.init_containers.values():
                if ctr.sidecar and ctr.running:
                    ctr.terminate(0, "Completed")
        _render_container_statuses(pod, sim)
        _set_readiness(pod, sim)
        return self._commit_copy(pod)

    def _disrupt(self, name: str, namespace: str | None, reason: str, message: str,
                 kubelet_alive: bool = True) -> dict:
        with self._lock:
            pod = self._pod_for_update(name, namespace, scheduled=True)
            _set_condition(pod, "DisruptionTarget", "True", reason, message)
            self._commit("pods", pod, "MODIFIED")
            meta = pod["metadata"]
            return self._delete_pod(meta["namespace"], meta["name"], None, "default", {},
                                    kubelet_alive=kubelet_alive)

    def _enforce_deadline(self, pod: dict) -> None:
        if pod["status"].get("phase") not in ("Succeeded", "Failed") \
                and not pod["metadata"].get("deletionTimestamp"):
            self.deadline_exceeded(pod["metadata"]["name"], namespace=pod["metadata"]["namespace"])

    def _after(self, delay: float, fn: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + max(0.0, delay), next(self._timer_seq), fn))
            self._timer_cv.notify_all()

    def _pod_timer(self, pod: dict, fn: Callable[[dict], None]) -> Callable[[], None]:
        """Wrap ``fn(pod)`` to run only if the same pod instance (uid) still exists."""
        ns, name, uid = pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"]

        def fire() -> None:
            with self._lock:
                current = self._objects.get(("pods", ns, name))
                if current is None or current["metadata"]["uid"] != uid:
                    return
                fn(current)
        return fire

    def _timer_loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping:
                    now = time.monotonic()
                    if self._timers and self._timers[0][0] <= now:
                        break
                    self._timer_cv.wait(self._timers[0][0] - now if self._timers else None)
                if self._stopping:
                    return
                _, _, fn = heapq.heappop(self._timers)
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - surfaced through fake.errors
                self._record_error(exc)

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _run_script(self, pod: dict, steps: list) -> None:
        """Run behaviour steps one after the other; each delay counts from the previous step."""
        if not steps:
            return
        delay, action, kwargs = (tuple(steps[0]) + ({},))[:3]
        if action not in _KUBELET_ACTIONS:
            raise ValueError(f"unknown behaviour action {action!r}")

        def step(current: dict) -> None:
            scheduling = next((c for c in current["status"].get("conditions") or []
                               if c["type"] == "PodScheduled"), {})
            if current["status"].get("phase") in ("Succeeded", "Failed") \
                    or current["metadata"].get("deletionTimestamp") \
                    or scheduling.get("reason") == "Unschedulable":
                return  # the pod moved on (deleted, deadline, unschedulable): the script ends
            meta = current["metadata"]
            getattr(self, action)(meta["name"], namespace=meta["namespace"], **(kwargs or {}))
            self._run_script(current, steps[1:])
        self._after(float(delay), self._pod_timer(pod, step))

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _stream_count(self, delta: int) -> None:
        with self._lock:
            self._streams += delta
            self._changed.notify_all()

    # -- internals: HTTP handling ------------------------------------------

    def _handle(self, method: str, path: str, query: dict, raw: bytes, headers: dict) -> Any:
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        with self._lock:
            self.requests.append(RecordedRequest(method, path, dict(query), copy.deepcopy(body), headers))
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if raw and isinstance(body, str):
            raise ApiError.bad_request(f"error decoding request body: {body[:80]!r} is not valid JSON")
        for pattern, route in _ROUTES:
            if m := pattern.match(path):
                handler = getattr(self, f"_http_{route}_{method.lower()}", None)
                if handler is None:
                    raise ApiError(405, "MethodNotAllowed",
                                   "the server does not allow this method on the requested resource")
                return handler(query=query, body=body, headers=headers, **m.groupdict())
        raise ApiError(404, "NotFound", "the server could not find the requested resource", {})

    # pods

    def _http_pods_get(self, ns: str, query: dict, **_: Any) -> Any:
        return self._list_or_watch("pods", ns, query)

    def _http_all_pods_get(self, query: dict, **_: Any) -> Any:
        return self._list_or_watch("pods", None, query)

    def _http_pods_post(self, ns: str, body: Any, **_: Any) -> _Json:
        return _Json(201, self._create_pod(ns, body))

    def _http_pods_delete(self, ns: str, query: dict, body: Any, **_: Any) -> _Json:
        """DELETE collection: gracefully delete every pod matching the selectors."""
        selector = Selector.parse("pods", query.get("labelSelector"), query.get("fieldSelector"))
        grace, source, options = self._delete_options(query, body)
        with self._lock:
            names = [o["metadata"]["name"] for o in self._list("pods", ns, selector)]
            items = [self._delete_pod(ns, n, grace, source, options) for n in names]
            return _Json(200, {"kind": "PodList", "apiVersion": "v1",
                               "metadata": {"resourceVersion": str(self._rv)},
                               "items": [self._item(i) for i in items]})

    def _http_pod_get(self, ns: str, name: str, **_: Any) -> _Json:
        with self._lock:
            return _Json(200, self._get("pods", ns, name))

    def _http_pod_delete(self, ns: str, name: str, query: dict, body: Any, **_: Any) -> _Json:
        grace, source, options = self._delete_options(query, body)
        with self._lock:
            return _Json(200, self._delete_pod(ns, name, grace, source, options))

    def _http_pod_patch(self, ns: str, name: str, body: Any, headers: dict, **_: Any) -> _Json:
        return _Json(200, self._patch("pods", ns, name, headers.get("content-type", ""), body))

    def _http_pod_put(self, ns: str, name: str, body: Any, **_: Any) -> _Json:
        return _Json(200, self._replace("pods", ns, name, body))

    def _http_pod_log_get(self, ns: str, name: str, query: dict, **_: Any) -> Any:
        return self._pod_log(ns, name, query)

    # nodes

    def _http_nodes_get(self, query: dict, **_: Any) -> Any:
        return self._list_or_watch("nodes", "", query)

    def _http_node_get(self, name: str, **_: Any) -> _Json:
        with self._lock:
            return _Json(200, self._get("nodes", "", name))

    def _http_node_patch(self, name: str, body: Any, headers: dict, **_: Any) -> _Json:
        return _Json(200, self._patch("nodes", "", name, headers.get("content-type", ""), body))

    def _http_node_put(self, name: str, body: Any, **_: Any) -> _Json:
        return _Json(200, self._replace("nodes", "", name, body))

    def _http_node_delete(self, name: str, query: dict, body: Any, **_: Any) -> _Json:
        grace, source, options = self._delete_options(query, body)
        with self._lock:
            node = copy.deepcopy(self._get("nodes", "", name))
            self.deletions.append(RecordedDelete("nodes", None, name, grace, source, 0, options))
            self._commit("nodes", node, "DELETED")
            return _Json(200, node)

    # misc

    def _http_version_get(self, **_: Any) -> _Json:
        return _Json(200, {"major": "1", "minor": "31", "gitVersion": _KUBELET_VERSION, "platform": "linux/amd64"})

    def _http_health_get(self, **_: Any) -> _Text:
        return _Text(200, "ok")

    # -- API operations -----------------------------------------------------

    def _create_pod(self, ns: str, body: Any) -> dict:
        if not isinstance(body, dict):
            raise ApiError.bad_request("the body of the request must be a Pod object")
        if body.get("kind", "Pod") != "Pod":
            raise ApiError.bad_request(f"the kind in the body ({body.get('kind')}) is not Pod")
        meta = body.get("metadata") or {}
        if meta.get("namespace") not in (None, "", ns):
            raise ApiError.bad_request("the namespace of the provided object does not match the namespace "
                                       "sent on the request")
        with self._lock:
            name = meta.get("name") or self._generate_name(ns, meta.get("generateName"))
            self._validate_pod(name, body)
            if ("pods", ns, name) in self._objects:
                raise ApiError.already_exists("pods", name)
            pod = copy.deepcopy(body)
            pod["kind"], pod["apiVersion"] = "Pod", "v1"
            pod_meta = pod.setdefault("metadata", {})
            pod_meta.update(name=name, namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=rfc3339())
            _default_pod_spec(pod["spec"])
            pod["status"] = {"phase": "Pending", "qosClass": _qos_class(pod["spec"])}
            self._sims[(ns, name)] = _PodSim.for_pod(pod)
            self._commit("pods", pod, "ADDED")
            self.created[name] = copy.deepcopy(body)
            if self.behaviour is not None:
                self._after(0.0, self._pod_timer(pod, self._start_behaviour))
            return copy.deepcopy(pod)

    def _start_behaviour(self, pod: dict) -> None:
        behaviour = self.behaviour
        if behaviour is not None:
            self._run_script(pod, list(behaviour(copy.deepcopy(pod)) or []))

    def _generate_name(self, ns: str, prefix: str | None) -> str:
        if not prefix:
            return ""
        while True:
            name = prefix + "".join(random.choice(_NAME_ALPHABET) for _ in range(5))
            if ("pods", ns, name) not in self._objects:
                return name

    @staticmethod
    def _validate_pod(name: str, body: dict) -> None:
        meta = body.get("metadata") or {}
        spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
        causes = [_required("metadata.name", "name or generateName is required")] if not name \
            else _name_causes(name)
        causes += _label_causes(meta.get("labels"), "metadata.labels")
        causes += _label_causes(meta.get("annotations"), "metadata.annotations")
        if not spec.get("containers"):
            causes.append(_required("spec.containers"))
        for group in ("initContainers", "containers"):
            seen = set()
            for i, c in enumerate(spec.get(group) or []):
                path = f"spec.{group}[{i}]"
                cname = c.get("name") if isinstance(c, dict) else None
                if not cname:
                    causes.append(_required(f"{path}.name"))
                elif len(cname) > 63 or not _DNS1123_LABEL.match(cname):
                    causes.append(_invalid_value(f"{path}.name", cname, _LABEL_MSG))
                elif cname in seen:
                    causes.append({"reason": "FieldValueDuplicate", "field": f"{path}.name",
                                   "message": f"Duplicate value: {json.dumps(cname)}"})
                seen.add(cname)
                if isinstance(c, dict) and not c.get("image"):
                    causes.append(_required(f"{path}.image"))
        if causes:
            raise ApiError.invalid("Pod", name, causes)

    @staticmethod
    def _delete_options(query: dict, body: Any) -> tuple[int | None, str, dict]:
        """DeleteOptions come from the body when there is one, else from the query (as the
        apiserver's DeleteResource handler does)."""
        if isinstance(body, dict) and body:
            options, source = dict(body), "body"
        else:
            options, source = dict(query), "query"
        grace = options.get("gracePeriodSeconds")
        if grace is None:
            return None, "default", options
        try:
            return int(grace), source, options
        except (TypeError, ValueError):
            raise ApiError.bad_request(f"invalid gracePeriodSeconds {grace!r}") from None

    def _delete_pod(self, ns: str, name: str, grace: int | None, source: str, options: dict,
                    kubelet_alive: bool = True) -> dict:
        """Graceful deletion: deletionTimestamp (MODIFIED), the container gets SIGTERM, then the
        object goes (DELETED). Unscheduled or terminal pods, and grace 0, go at once."""
        pod = copy.deepcopy(self._get("pods", ns, name))
        precondition = (options.get("preconditions") or {}).get("uid")
        if precondition and precondition != pod["metadata"]["uid"]:
            raise ApiError.conflict("pods", name, f"Precondition failed: UID in precondition: {precondition}, "
                                                  f"UID in object meta: {pod['metadata']['uid']}")
        effective = pod["spec"].get("terminationGracePeriodSeconds", 30) if grace is None else grace
        if not pod["spec"].get("nodeName") or pod["status"].get("phase") in ("Succeeded", "Failed"):
            effective = 0
        self.deletions.append(RecordedDelete("pods", ns, name, grace, source, effective, options))
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") and effective >= meta.get("deletionGracePeriodSeconds", 0):
            return pod  # already terminating with a shorter grace period
        meta["deletionTimestamp"] = rfc3339(_utcnow() + timedelta(seconds=effective))
        meta["deletionGracePeriodSeconds"] = effective
        if effective == 0:
            self._commit("pods", pod, "DELETED")
            return copy.deepcopy(pod)
        self._commit("pods", pod, "MODIFIED")
        if not kubelet_alive:  # nobody will confirm the kill: PodGC-style forced removal
            self._after(0.0, self._pod_timer(pod, lambda p: self._commit("pods", copy.deepcopy(p), "DELETED")))
        elif self.sigterm_exit_delay is not None and self.sigterm_exit_delay < effective:
            self._after(self.sigterm_exit_delay, self._pod_timer(pod, self._exit_on_sigterm))
        if kubelet_alive:
            self._after(float(effective), self._pod_timer(pod, self._kill_after_grace))
        return copy.deepcopy(pod)

    def _exit_on_sigterm(self, pod: dict) -> None:
        """The container honours SIGTERM: exit 143 (reason Error), then the pod object goes."""
        pod = copy.deepcopy(pod)
        sim = self._sim_of(pod)
        if any(c.running for c in sim.all()):
            for ctr in sim.all():
                if ctr.running:
                    ctr.terminate(143, "Error")
            mains = list(sim.containers.values())
            ok = all(c.terminated and c.state["terminated"]["exitCode"] == 0 for c in mains)
            pod["status"]["phase"] = "Succeeded" if ok else "Failed"
            _render_container_statuses(pod, sim)
            _set_readiness(pod, sim)
            self._commit("pods", pod, "MODIFIED")
            pod = copy.deepcopy(pod)
        self._commit("pods", pod, "DELETED")

    def _kill_after_grace(self, pod: dict) -> None:
        """Grace period over: SIGKILL (137) whatever still runs, and the object goes."""
        pod = copy.deepcopy(pod)
        sim = self._sim_of(pod)
        if any(c.running for c in sim.all()):
            for ctr in sim.all():
                if ctr.running:
                    ctr.terminate(137, "Error")
            pod["status"]["phase"] = "Failed"
            _render_container_statuses(pod, sim)
            _set_readiness(pod, sim)
        self._commit("pods", pod, "DELETED")

    def _patch(self, resource: str, ns: str, name: str, content_type: str, body: Any) -> dict:
        ctype = content_type.split(";")[0].strip().lower()
        with self._lock:
            current = self._get(resource, ns, name)
            try:
                if ctype == "application/merge-patch+json" and isinstance(body, dict):
                    patched = merge_patch(current, body)
                elif ctype == "application/strategic-merge-patch+json" and isinstance(body, dict):
                    patched = strategic_merge_patch(current, body)
                elif ctype == "application/json-patch+json" and isinstance(body, list):
                    patched = json_patch(current, body)
                elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json",
                               "application/json-patch+json"):
                    raise ApiError.bad_request(f"the body of a {ctype} patch has the wrong shape")
                else:
                    raise ApiError(415, "UnsupportedMediaType",
                                   f"the body of the request was in an unknown format - accepted media types "
                                   f"include: application/json-patch+json, application/merge-patch+json, "
                                   f"application/apply-patch+yaml")
            except PatchError as err:
                raise ApiError(422, "Invalid", str(err)) from None
            return self._update(resource, current, patched)

    def _replace(self, resource: str, ns: str, name: str, body: Any) -> dict:
        if not isinstance(body, dict):
            raise ApiError.bad_request("the body of the request must be an object")
        with self._lock:
            current = self._get(resource, ns, name)
            if (body.get("metadata") or {}).get("name") != name:
                raise ApiError.bad_request(f"the name of the object ({(body.get('metadata') or {}).get('name')}) "
                                           f"does not match the name on the URL ({name})")
            if not (body.get("metadata") or {}).get("resourceVersion"):
                raise ApiError.invalid(_KINDS[resource], name, [_invalid_value(
                    "metadata.resourceVersion", 0, "must be specified for an update")])
            return self._update(resource, current, copy.deepcopy(body))

    def _update(self, resource: str, current: dict, new: dict) -> dict:
        """Shared by PATCH and PUT: optimistic concurrency, immutable fields, status untouched."""
        name = current["metadata"]["name"]
        new_meta = new.setdefault("metadata", {})
        wanted_rv = new_meta.get("resourceVersion")
        if wanted_rv is not None and wanted_rv != current["metadata"]["resourceVersion"]:
            raise ApiError.conflict(resource, name, "the object has been modified; please apply your changes "
                                                    "to the latest version and try again")
        for key in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                    "deletionGracePeriodSeconds", "resourceVersion"):
            if key in current["metadata"]:
                new_meta[key] = current["metadata"][key]
            else:
                new_meta.pop(key, None)
        new["kind"], new["apiVersion"] = current["kind"], current["apiVersion"]
        new["status"] = copy.deepcopy(current.get("status"))  # the main resource ignores status
        causes = _label_causes(new_meta.get("labels"), "metadata.labels") \
            + _label_causes(new_meta.get("annotations"), "metadata.annotations")
        if resource == "pods" and _mutable_pod_spec(new.get("spec")) != _mutable_pod_spec(current["spec"]):
            causes.append({"reason": "FieldValueForbidden", "field": "spec",
                           "message": "Forbidden: pod updates may not change fields other than "
                                      "`spec.containers[*].image`,`spec.initContainers[*].image`,"
                                      "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to "
                                      "existing tolerations),`spec.terminationGracePeriodSeconds`"})
        if causes:
            raise ApiError.invalid(_KINDS[resource], name, causes)
        if new == current:
            return copy.deepcopy(current)  # a no-op update does not bump resourceVersion
        self._commit(resource, new, "MODIFIED")
        return copy.deepcopy(new)

    # -- list and watch -------------------------------------------------------

    def _list(self, resource: str, namespace: str | None, selector: Selector) -> list[dict]:
        return [o for (r, ns, _), o in sorted(self._objects.items())
                if r == resource and namespace in (None, ns) and selector.matches(o)]

    @staticmethod
    def _item(obj: dict) -> dict:
        """List items carry no kind/apiVersion, as in real list responses."""
        return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}

    def _list_or_watch(self, resource: str, namespace: str | None, query: dict) -> Any:
        selector = Selector.parse(resource, query.get("labelSelector"), query.get("fieldSelector"))
        if query.get("watch", "").lower() in ("true", "1"):
            return self._watch(resource, namespace, selector, query)
        with self._lock:
            items = self._list(resource, namespace, selector)
            meta: dict = {"resourceVersion": str(self._rv)}
        items = self._paginate(items, query, meta)
        return _Json(200, {"kind": _KINDS[resource] + "List", "apiVersion": "v1", "metadata": meta,
                           "items": [self._item(o) for o in items]})

    @staticmethod
    def _paginate(items: list[dict], query: dict, meta: dict) -> list[dict]:
        """``limit``/``continue`` over (namespace, name) order; continue tokens are opaque."""
        def key(o: dict) -> list[str]:
            return [o["metadata"].get("namespace", ""), o["metadata"]["name"]]
        if token := query.get("continue"):
            try:
                start = json.loads(base64.urlsafe_b64decode(token.encode()))["start"]
            except (ValueError, KeyError, TypeError):
                raise ApiError.bad_request("continue key is not valid: malformed token") from None
            items = [o for o in items if key(o) > start]
        limit = int(query.get("limit") or 0)
        if limit and len(items) > limit:
            meta["continue"] = base64.urlsafe_b64encode(json.dumps({"start": key(items[limit - 1])}).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return items

    def _watch(self, resource: str, namespace: str | None, selector: Selector, query: dict) -> _Stream:
        rv_param = query.get("resourceVersion") or ""
        if rv_param not in ("", "0") and not rv_param.isdigit():
            raise ApiError.bad_request(f"invalid resource version: {rv_param!r}")
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        bookmarks = query.get("allowWatchBookmarks", "").lower() == "true"
        kind = _KINDS[resource]

        def accepts(obj: dict | None) -> bool:
            return obj is not None and namespace in (None, obj["metadata"].get("namespace", "")) \
                and selector.matches(obj)

        def translate(event: _Event) -> tuple[str, dict] | None:
            """Events as the selector-filtered watcher sees them (enter = ADDED, leave = DELETED)."""
            if event.resource != resource:
                return None
            now, before = accepts(event.obj), accepts(event.prev)
            if event.type == "DELETED":
                return ("DELETED", event.obj) if now or before else None
            if event.type == "ADDED":
                return ("ADDED", event.obj) if now else None
            if now:
                return ("MODIFIED" if before else "ADDED", event.obj)
            return ("DELETED", event.obj) if before else None

        def line(event_type: str, obj: dict) -> bytes:
            return json.dumps({"type": event_type, "object": obj}).encode() + b"\n"

        def bookmark(rv: int) -> bytes:
            return line("BOOKMARK", {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}})

        def chunks(client_gone: Callable[[], bool]) -> Iterator[bytes]:
            deadline = time.monotonic() + timeout if timeout is not None else None
            with self._lock:
                if rv_param in ("", "0"):
                    initial = [line("ADDED", o) for o in self._list(resource, namespace, selector)]
                    cursor = self._rv
                elif int(rv_param) < self._floor:
                    initial, cursor = [line("ERROR", ApiError.expired(int(rv_param), self._floor).status())], -1
                else:
                    initial, cursor = [], int(rv_param)
            yield b"".join(initial)
            next_bookmark = time.monotonic() + self.bookmark_interval
            while cursor >= 0:
                with self._lock:
                    while not self._stopping and self._rv <= cursor:
                        now = time.monotonic()
                        if (deadline is not None and now >= deadline) or (bookmarks and now >= next_bookmark):
                            break
                        waits = [_POLL_SECONDS] + ([deadline - now] if deadline is not None else []) \
                            + ([next_bookmark - now] if bookmarks else [])
                        self._changed.wait(max(0.0, min(waits)))
                        if client_gone():
                            return
                    if cursor < self._floor:  # this watcher fell behind the retained history
                        yield line("ERROR", ApiError.expired(cursor, self._floor).status())
                        return
                    first = self._history[0].rv if self._history else self._rv + 1
                    events = list(itertools.islice(self._history, max(0, cursor + 1 - first), None))
                    cursor, stopping = self._rv, self._stopping
                out = [line(*t) for t in map(translate, events) if t]
                now = time.monotonic()
                expired = deadline is not None and now >= deadline
                if bookmarks and (now >= next_bookmark or expired or stopping):
                    out.append(bookmark(cursor))
                    next_bookmark = now + self.bookmark_interval
                yield b"".join(out)
                if expired or stopping:
                    return
        return _Stream("application/json", chunks)

    # -- logs ---------------------------------------------------------------

    def _pod_log(self, ns: str, name: str, query: dict) -> Any:
        with self._lock:
            pod = self._get("pods", ns, name)
            ctr = self._log_container(pod, query.get("container"))
            sim = self._sim_of(pod)
        follow = query.get("follow", "").lower() == "true"
        stamps = query.get("timestamps", "").lower() == "true"
        tail = int(query["tailLines"]) if query.get("tailLines") else None
        since = float(query["sinceSeconds"]) if query.get("sinceSeconds") else None
        limit = int(query["limitBytes"]) if query.get("limitBytes") else None

        def render(entries: list[tuple[datetime, str]]) -> bytes:
            return "".join(f"{rfc3339nano(t)} {s}\n" if stamps else f"{s}\n" for t, s in entries).encode()

        with self._lock:
            entries = list(ctr.logs)
        total = len(entries)
        if since is not None:
            cutoff = _utcnow() - timedelta(seconds=since)
            entries = [e for e in entries if e[0] >= cutoff]
        if tail is not None:
            entries = entries[-tail:] if tail > 0 else []
        if not follow:
            text = render(entries)
            return _Text(200, (text[:limit] if limit is not None else text).decode("utf-8", "replace"))

        def chunks(client_gone: Callable[[], bool]) -> Iterator[bytes]:
            yield render(entries)
            cursor = total
            while True:
                with self._lock:
                    while not (self._stopping or sim.gone or not ctr.running or len(ctr.logs) > cursor):
                        self._changed.wait(_POLL_SECONDS)
                        if client_gone():
                            return
                    new, cursor = ctr.logs[cursor:], len(ctr.logs)
                    done = self._stopping or sim.gone or not ctr.running
                yield render(new)
                if done:
                    return
        return _Stream("text/plain", chunks)

    def _log_container(self, pod: dict, requested: str | None) -> _Container:
        """The container a log request addresses, with the apiserver's 400s for bad requests."""
        name = pod["metadata"]["name"]
        spec = pod["spec"]
        mains = [c["name"] for c in spec["containers"]]
        inits = [c["name"] for c in spec.get("initContainers") or []]
        if not requested:
            if len(mains) != 1:
                raise ApiError.bad_request(f"a container name must be specified for pod {name}, choose one of: "
                                           f"[{' '.join(mains)}]" + (f" or one of the init containers: "
                                                                     f"[{' '.join(inits)}]" if inits else ""))
            requested = mains[0]
        if requested not in mains + inits:
            raise ApiError.bad_request(f"container {requested} is not valid for pod {name}")
        if not spec.get("nodeName"):
            raise ApiError.bad_request(f"pod {name} does not have a host assigned")
        ctr = self._sim_of(pod).find(requested)
        assert ctr is not None
        if ctr.container_id is None:
            reason = ctr.state.get("waiting", {}).get("reason", "ContainerCreating")
            raise ApiError.bad_request(f'container "{requested}" in pod "{name}" is waiting to start: '
                                       + ("trying and failing to pull image" if "Image" in reason else reason))
        return ctr


def _tolerates(toleration: dict, taint: dict) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", "")


def _node_misfit(pod: dict, node: dict) -> str | None:
    """Why the scheduler's filters reject ``node`` for ``pod`` (None when it fits)."""
    spec, node_spec = pod["spec"], node.get("spec") or {}
    if node_spec.get("unschedulable"):
        return "node(s) were unschedulable"
    taints = list(node_spec.get("taints") or [])
    ready = next((c for c in node["status"].get("conditions", []) if c["type"] == "Ready"), {})
    if ready.get("status") != "True":
        taints.append({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"})
    for taint in taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") \
                and not any(_tolerates(t, taint) for t in spec.get("tolerations") or []):
            return f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return "node(s) didn't match Pod's node affinity/selector"
    return None


def _mutable_pod_spec(spec: Any) -> Any:
    """A pod spec with the fields an update may change blanked out, for comparison."""
    spec = copy.deepcopy(spec) or {}
    for group in ("containers", "initContainers"):
        for c in spec.get(group) or []:
            c.pop("image", None)
    for key in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
        spec.pop(key, None)
    return spec

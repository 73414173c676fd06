"""The Pod runtime port: how the launcher runs one heavy attempt in a fresh Pod (Kubernetes) or
a fresh local process (the embedded default), and what came of it.

A runtime turns its platform's vocabulary (container states, exit codes, signals) into a
`PodOutcome`; the launcher turns outcomes into attempt results the same way for every runtime.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Phase = Literal[
    "succeeded", "failed", "oom_killed", "infrastructure", "image_pull", "unschedulable", "deadline", "stopped"
]
RESULT_MARK = "::flowforge-result::"  # the Pod-side runtime's last stdout line: RESULT_MARK + JSON


@dataclass(frozen=True)
class PodRequest:
    """One heavy attempt, as a runtime needs it."""

    name: str  # unique per attempt; DNS-1123 (Kubernetes object names)
    labels: dict[str, str]
    command: list[str]  # the container's entry point; for a Python fn, the Pod-side runtime
    args: list[str] = field(default_factory=list)
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cpu: str | None = None
    memory: str | None = None
    gpu: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    timeout_s: float | None = None


@dataclass(frozen=True)
class PodOutcome:
    phase: Phase
    exit_code: int | None = None
    message: str = ""
    logs: list[tuple[float, str, str]] = field(default_factory=list)  # (unix time, stream, line)
    startup_s: float | None = None  # created -> container running


class PodRuntime(Protocol):
    # True when a Pod outlives the launcher that created it (Kubernetes): a launcher stopping
    # leaves it running, and the attempt's next delivery follows the same Pod.
    outlives_launcher: bool

    async def run(self, request: PodRequest) -> PodOutcome:
        """Create the Pod, follow it to its end, collect its logs; return what came of it."""

    async def stop(self, name: str, grace_s: float) -> None:
        """Stop a running Pod: SIGTERM, then SIGKILL after `grace_s`. `run` then returns
        (phase "stopped" unless it ended first). Unknown names are ignored."""

    async def close(self) -> None: ...


def pod_name(run_id: str, task_key: str, attempt: int) -> str:
    """ff-<run prefix>-<task>-<attempt>, DNS-1123, at most 63 characters, unique per attempt."""
    task = re.sub(r"[^a-z0-9-]+", "-", task_key.lower()).strip("-")[:30] or "task"
    exact = zlib.crc32(f"{run_id}/{task_key}".encode())  # keys that clean to the same text differ here
    return f"ff-{run_id.replace('-', '')[:12]}-{task}-{exact:08x}-{attempt}"


def label_value(text: str) -> str:
    """`text` as a valid Kubernetes label value: [A-Za-z0-9._-], at most 63, alphanumeric ends."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:63].strip("._-")

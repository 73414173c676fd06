"""The ports: what the engine needs from the world, as Protocols, plus the plain values that
cross them. Backends implement these; the engine imports nothing else with I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from flowforge.domain.model import Run, Task
from flowforge.domain.states import RunStatus, TaskStatus


@dataclass
class TaskWrite:
    run_id: str
    tenant: str
    before: TaskStatus | None  # None: insert a new row
    before_attempt: int
    task: Task
    pool: str
    executor: str


@dataclass
class AttemptWrite:
    run_id: str
    tenant: str
    key: str
    number: int
    status: str
    pool: str | None = None
    queued_at: float | None = None
    dispatched_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    agent: str | None = None
    error: str | None = None
    reason: str | None = None
    logs: list[Any] | None = None


@dataclass
class RunWrite:
    run_id: str
    before: RunStatus
    after: RunStatus
    cancel_requested: bool
    error: str | None
    at: float
    retries: int = 0


@dataclass
class WriteBatch:
    """Everything one coordinator cycle writes, coalesced per row, applied in one transaction."""

    tasks: dict[tuple[str, str], TaskWrite] = field(default_factory=dict)
    attempts: dict[tuple[str, str, int], AttemptWrite] = field(default_factory=dict)
    runs: dict[str, RunWrite] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.tasks or self.attempts or self.runs)


@dataclass(frozen=True)
class LoadedRun:
    run: Run
    partition: int
    undispatched: frozenset[str]  # keys of queued tasks whose attempt is not in a stream yet
    dispatched_at: dict[str, float]  # queued/running task key -> when its attempt was dispatched


@dataclass(frozen=True)
class Quotas:
    """Every tenant's limits on what it has in flight, and its projects' that narrow them:
    {limit name: value} with only the limits that are set (max_running_tasks, max_cpu in
    millicores, max_memory in bytes, max_gpu); and each tenant's fair-share weight."""

    tenants: dict[str, dict[str, int]] = field(default_factory=dict)
    projects: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    partition: int
    payload: bytes


class RunStore(Protocol):
    async def load_runs(self, run_ids: Sequence[str]) -> dict[str, LoadedRun]: ...

    async def apply(self, batch: WriteBatch) -> set[str]:
        """Write the batch in one transaction. If any compare-and-set misses, roll back and
        return the ids of the runs whose rows had moved on; else return an empty set."""
        ...

    async def active_runs(self, partitions: Sequence[int]) -> list[str]: ...

    async def unpublished(self, partitions: Sequence[int], older_than_s: float, limit: int) -> list[OutboxEntry]: ...

    async def mark_published(self, ids: Sequence[int]) -> None: ...

    async def purge_outbox(self, partitions: Sequence[int], older_than_s: float) -> int: ...


@dataclass(frozen=True)
class Delivery:
    """One envelope read from a stream, with what is needed to acknowledge it."""

    stream: str
    entry_id: bytes
    envelope: dict[str, Any]


class WorkQueue(Protocol):
    async def read_events(self, partitions: Sequence[int], count: int, block_ms: int) -> list[Delivery]: ...

    async def publish_events(self, events: Sequence[tuple[int, bytes]]) -> None: ...

    async def dispatch(self, entries: Sequence[tuple[int, str, bytes]]) -> list[bytes]:
        """XADD (partition, pool, envelope) entries to their pool streams, in one round trip;
        their entry ids, in order."""
        ...

    async def commit(
        self,
        dispatches: Sequence[tuple[int, str, bytes]],
        stops: Sequence[tuple[str, str, int]],
        deliveries: Sequence[Delivery],
    ) -> list[bytes]:
        """Dispatch, signal stops and acknowledge events, in one round trip; the dispatch
        entries' ids, in order."""
        ...

    async def revoke(self, partition: int, pool: str, entry_ids: Sequence[bytes]) -> list[bytes]:
        """Delete those of the entries that no agent has read yet, atomically; their ids."""
        ...

    async def attempts_in_stream(self, partition: int, pool: str) -> set[tuple[str, str, int]]: ...

    async def events_position(self, partition: int) -> bytes:
        """The id of the newest event of the partition (to wait until it has been handled)."""
        ...

    async def events_handled_through(self, partition: int, position: bytes) -> bool:
        """Whether every event of the partition up to `position` was read and acknowledged."""
        ...

    async def check_epoch(self) -> bool:
        """True if Redis kept its data since the last call (False after a flush or a failover
        that lost writes: the caller then rebuilds from Postgres)."""
        ...

    async def trim(self, partition: int, pools: Sequence[str]) -> None: ...


class Clock(Protocol):
    def now(self) -> float: ...


class Metrics(Protocol):
    """What the coordinator reports as attempts move (flowforge.metrics.Metrics). Called once
    per attempt on the hot path: implementations must be cheap. `pool` is the dispatch pool."""

    def dispatched(self, tenant: str, pool: str, waited_s: float) -> None:
        """An attempt was dispatched `waited_s` after it became ready."""

    def started(self, pool: str, waited_s: float) -> None:
        """An attempt's code started `waited_s` after its dispatch."""

    def finished(self, pool: str, status: str, seconds: float) -> None:
        """An attempt that ran `seconds` ended (succeeded, failed or cancelled)."""

    def run_ended(self, tenant: str, status: str) -> None: ...

    def board_claim(self, stored: bool) -> None:
        """A claim on the coordinators' board was stored (the room was there) or refused."""

    def board_seen(self, coordinators: int) -> None:
        """An exchange on the board saw `coordinators` (this one included)."""


ROLES = ("admin", "tenant-admin", "member", "viewer")
OPERATOR_TENANT = "default"  # the operator's tenant: only it holds `admin` tokens


@dataclass(frozen=True)
class Principal:
    """Who calls the API: the tenant every object of the request is scoped to."""

    tenant: str
    token_id: str
    role: str
    projects: frozenset[str] | None = None  # the projects it may see and act on; None: all of its tenant's

    def sees(self, project: str) -> bool:
        return self.projects is None or project in self.projects


@dataclass(frozen=True)
class DagVersion:
    """One stored version of a DAG spec."""

    id: str
    name: str
    version: int
    spec: dict[str, Any]
    created_at: datetime
    stored: bool = False  # this call stored it (False: an equal latest version was returned)
    first: bool = False  # no live version of this name existed before this one was stored

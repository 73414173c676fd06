"""Request and response bodies, as they appear in /openapi.json."""

from __future__ import annotations

import typing
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from flowforge.domain import quotas

RunStatusName = Literal["pending", "running", "succeeded", "failed", "cancelled"]
ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"  # tenant and project ids
ProjectId = Annotated[str, Field(pattern=ID_PATTERN, max_length=63, description="A project's id.")]
TaskStatusName = Literal[
    "pending", "queued", "running", "retrying", "succeeded", "failed", "skipped", "upstream_failed", "cancelled"
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunCreate(_In):
    """Start a run of an inline DAG (`dag`) or of a stored template (`name`, optional `version`)."""

    dag: dict[str, Any] | None = Field(None, description="An inline DAG spec (see the DAG spec reference).")
    name: str | None = Field(None, min_length=1, max_length=64, description="A stored template's name.")
    version: int | None = Field(None, ge=1, le=2**31 - 1, description="Template version; unset: the latest.")
    params: dict[str, Any] = Field(default_factory=dict, description="Overrides of the DAG's params.")
    project: ProjectId = Field("default", description="The project to run in (and to find the template in).")

    @model_validator(mode="after")
    def _one_source(self) -> RunCreate:
        if (self.dag is None) == (self.name is None):
            raise ValueError("give either `dag` (an inline spec) or `name` (a stored template), not both or neither")
        if self.version is not None and self.name is None:
            raise ValueError("`version` goes with `name`")
        return self


class RunCreated(BaseModel):
    id: str
    project: str
    dag: str
    version: int
    status: RunStatusName = "pending"
    url: str


class Accepted(BaseModel):
    id: str
    action: Literal["cancel", "retry"]
    detail: str


class AttemptOut(BaseModel):
    number: int
    status: str
    pool: str | None = None
    agent: str | None = None
    reason: str | None = None
    error: str | None = None
    logs: list[list[Any]] | None = Field(None, description="[unix time, stream, line]; only with ?logs=true.")
    queued_at: datetime | None = None
    dispatched_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class TaskOut(BaseModel):
    key: str
    name: str
    map_index: int | None = None
    instances: int | None = Field(None, description=(
        "A mapped task: how many instances it has. They are made a chunk per coordinator cycle, so "
        "fewer may be listed while a large fan-out is still being made."))
    status: TaskStatusName
    attempt: int
    executor: Literal["light", "heavy"]
    route_reason: str | None = Field(None, description="Why the router chose the executor.")
    pool: str
    output: Any = None
    error: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: list[AttemptOut]
    waiting_for: str | None = Field(None, description=(
        "Why a queued task is not dispatched yet when a quota holds it, e.g. "
        "\"quota: tenant acme max_gpu 2 (2 in use)\"; null otherwise (it waits for a free slot, if at all)."))


class RunSummary(BaseModel):
    id: str
    project: str
    dag_name: str
    dag_version: int
    dag_template: bool = Field(description="True if the run is of a stored template, false for an inline DAG.")
    status: RunStatusName
    params: dict[str, Any]
    error: str | None = None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class RunListItem(RunSummary):
    task_counts: dict[str, int] = Field(description="Tasks by status.")


class RunOut(RunSummary):
    tasks: list[TaskOut]


class RunPage(BaseModel):
    items: list[RunListItem]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last.")


class DagOut(BaseModel):
    name: str
    version: int
    created_at: datetime
    spec: dict[str, Any]
    versions: list[int] = Field(description="Every readable, runnable version.")
    stored: bool | None = Field(None, description="On POST and PUT: whether this request stored a new version "
                                                  "(false: the spec equals the latest version).")


class DagListItem(BaseModel):
    name: str
    version: int = Field(description="The latest version.")
    versions: int = Field(description="How many versions there are.")
    created_at: datetime
    description: str | None = None
    tasks: int


class DagPage(BaseModel):
    items: list[DagListItem]
    next_cursor: str | None = None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class PoolOut(BaseModel):
    name: str
    slots_per_agent: int
    min_agents: int
    max_agents: int
    node_selector: dict[str, str]
    managed: bool = Field(description="A pool manager reported on this pool in the last 30 s.")
    desired: int | None = Field(description="Agents the nodes (and the backlog) ask for; null when unmanaged.")
    ready: int
    starting: int
    draining: int
    busy_agents: int
    free_slots: int
    backlog: int = Field(description="Attempts ready for the pool, waiting for a free slot.")
    pending_entries: int = Field(description="Dispatch entries delivered to an agent, not yet acknowledged.")
    node_groups: dict[str, int] = Field(description="Ready agents per node group.")
    desired_by_group: dict[str, int]
    nodes_seen_at: float | None = Field(None, description="Unix time the manager last read the nodes.")


class PoolList(BaseModel):
    items: list[PoolOut]


class AnnotateIn(_In):
    """Set these pools' agent counts on every node of a node group (other pools' stay)."""

    node_group: str = Field(..., min_length=1, max_length=63, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    counts: dict[str, int] = Field(..., min_length=1, description="pool -> agents per node, e.g. {\"default\": 4}.")

    @model_validator(mode="after")
    def _counts(self) -> AnnotateIn:
        for pool, n in self.counts.items():
            if not 0 <= n <= 1000:
                raise ValueError(f"counts.{pool}: {n} is outside 0..1000 agents per node")
        return self


class Annotated(BaseModel):
    node_group: str
    nodes: list[str]
    counts: dict[str, int]
    at: float = Field(description="Unix time the annotation was written: pools whose nodes_seen_at is "
                                  "later have seen it.")


def _cpu(value: Any) -> int | None:
    return None if value is None else quotas.millicores(value)


def _memory(value: Any) -> int | None:
    return None if value is None else quotas.byte_count(value)


# In: a quantity as Kubernetes writes it (a string, or a number); stored and compared as
# millicores and bytes.
CpuIn = typing.Annotated[int | float | str | None, BeforeValidator(_cpu)]
MemoryIn = typing.Annotated[int | str | None, BeforeValidator(_memory)]


class QuotasOut(BaseModel):
    """Limits (null: none). In flight: attempts dispatched and not ended; resources are summed
    over them, a light attempt counting its slot's share of its pool's agent, a heavy one its
    Pod's requests."""

    max_running_tasks: int | None = Field(None, description="Attempts in flight at once.")
    max_cpu: str | None = Field(None, description="Cores of the attempts in flight, e.g. \"8\" or \"1500m\".")
    max_memory: str | None = Field(None, description="Memory of the attempts in flight, e.g. \"32Gi\".")
    max_gpu: int | None = Field(None, description="GPUs of the attempts in flight.")
    max_active_runs: int | None = Field(None, description="Pending or running runs; a submission past it gets 429.")
    max_dag_tasks: int | None = Field(None, description="Tasks of one run (maps over params counted by their "
                                                        "items); a larger submission gets 429.")


class QuotasIn(_In):
    """Every limit (null or omitted: none); a PUT replaces them all."""

    max_running_tasks: int | None = Field(None, ge=1, le=1_000_000, description="null: no limit.")
    max_cpu: CpuIn = Field(None, description="Cores: 8, 2.5, \"500m\" (whole millicores).")
    max_memory: MemoryIn = Field(None, description="Bytes: \"32Gi\", \"512Mi\", or a number of bytes.")
    max_gpu: int | None = Field(None, ge=0, le=100_000, description="0: no GPU at all.")
    max_active_runs: int | None = Field(None, ge=1, le=1_000_000)
    max_dag_tasks: int | None = Field(None, ge=1, le=10_000_000)


class TenantLimits(QuotasOut):
    tenant: str
    weight: float = Field(description="Fair-share weight: twice the weight, twice the share of a busy pool.")


class TenantLimitsIn(QuotasIn):
    weight: float = Field(1.0, gt=0, le=1000)


class ProjectLimits(QuotasOut):
    """A project's limits narrow its tenant's: both apply."""

    tenant: str
    project: str


class ProjectLimitsIn(QuotasIn):
    pass


class TokenIn(_In):
    name: str = Field(..., min_length=1, max_length=200, description="A label to recognise the token by.")
    role: Literal["admin", "tenant-admin", "member", "viewer"] = Field(
        "member", description="admin exists in the operator's tenant only.")
    expires_in_seconds: int | None = Field(None, ge=60, le=10 * 365 * 86_400, description="null: never expires.")
    projects: list[ProjectId] | None = Field(None, min_length=1, max_length=100, description=(
        "Scope the token to these projects of the tenant (each must exist); null: every project."))


class TokenOut(BaseModel):
    id: str
    tenant: str
    name: str
    role: str
    projects: list[str] | None = Field(None, description="The projects it may see and act on; null: all.")
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class TokenCreated(TokenOut):
    token: str = Field(description="The token itself: shown this once, stored only as a hash.")


class TokenList(BaseModel):
    items: list[TokenOut]


class TenantIn(_In):
    id: str = Field(..., pattern=ID_PATTERN, max_length=63, description="Lowercase letters, digits and dashes.")
    name: str | None = Field(None, min_length=1, max_length=200, description="A display name; default: the id.")


class TenantOut(BaseModel):
    id: str
    name: str
    created_at: datetime


class TenantPage(BaseModel):
    items: list[TenantOut]
    next_cursor: str | None = None


class ProjectIn(_In):
    id: ProjectId
    name: str | None = Field(None, min_length=1, max_length=200, description="A display name; default: the id.")


class ProjectOut(BaseModel):
    tenant: str
    id: str
    name: str
    created_at: datetime
    active_runs: int | None = Field(None, description="Pending or running runs (when reading one project).")


class ProjectPage(BaseModel):
    items: list[ProjectOut]
    next_cursor: str | None = None


class LogLineOut(BaseModel):
    pos: int = Field(description="The line's place in its run, from 1: resume after it with `after` or Last-Event-ID.")
    task: str
    attempt: int
    ts: datetime
    stream: str = Field(description="stdout, stderr, log (the logging module) or system (FlowForge's notes).")
    line: str


class LogPage(BaseModel):
    items: list[LogLineOut]
    next_after: int = Field(description="Ask again with after=this for the lines that follow.")
    run_status: str


class LogTicket(BaseModel):
    ticket: str = Field(description="Open the stream with ?ticket=...; valid for one run, for `expires_in` seconds.")
    expires_in: float
    url: str

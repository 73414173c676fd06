"""Request and response bodies, as they appear in /openapi.json."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RunStatusName = Literal["pending", "running", "succeeded", "failed", "cancelled"]
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

    @model_validator(mode="after")
    def _one_source(self) -> RunCreate:
        if (self.dag is None) == (self.name is None):
            raise ValueError("give either `dag` (an inline spec) or `name` (a stored template), not both or neither")
        if self.version is not None and self.name is None:
            raise ValueError("`version` goes with `name`")
        return self


class RunCreated(BaseModel):
    id: str
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


class RunSummary(BaseModel):
    id: str
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


class TenantLimits(BaseModel):
    tenant: str
    max_running_tasks: int | None = Field(description="Attempts of this tenant in flight at once; null: no limit.")
    weight: float = Field(description="Fair-share weight: twice the weight, twice the share of a busy pool.")


class TenantLimitsIn(_In):
    max_running_tasks: int | None = Field(None, ge=1, le=1_000_000, description="null: no limit.")
    weight: float = Field(1.0, gt=0, le=1000)


class TokenIn(_In):
    name: str = Field(..., min_length=1, max_length=200, description="A label to recognise the token by.")
    role: Literal["admin", "tenant-admin", "member", "viewer"] = Field(
        "member", description="admin exists in the operator's tenant only.")
    expires_in_seconds: int | None = Field(None, ge=60, le=10 * 365 * 86_400, description="null: never expires.")


class TokenOut(BaseModel):
    id: str
    tenant: str
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class TokenCreated(TokenOut):
    token: str = Field(description="The token itself: shown this once, stored only as a hash.")


class TokenList(BaseModel):
    items: list[TokenOut]

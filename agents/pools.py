"""Pool configuration (`pool-config/NAME.yaml`, one pool per file) and its validation."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flowforge.domain import routing, spec


class AgentResources(BaseModel):
    """What Ray reserves for one agent; a slot's share (this / slots) is what `auto` routing
    compares a task's resources with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float | None = Field(None, gt=0, le=1024, description="Cores per agent (unset: none reserved; a slot counts as 1).")
    memory: str | None = Field(None, description="Memory per agent, e.g. '4Gi' (unset: a slot counts as 1Gi).")
    gpu: float = Field(0, ge=0, le=64, description="GPUs per agent.")

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None:
            routing.quantity(value)
        return value


class RuntimeEnv(BaseModel):
    """Passed to Ray as the agents' runtime_env."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env_vars: dict[str, str] = Field(default_factory=dict, description="Environment variables.")
    pip: list[str] = Field(default_factory=list, description="Packages installed for the agents.")
    working_dir: str | None = Field(None, description="Working directory shipped to the agents.")


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., pattern=spec.NAME_PATTERN)
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Labels of the nodes that host the pool's agents (empty: every node).",
    )
    agents_per_node: int = Field(
        2, ge=0, le=1000, description="Agents on each matching node that carries no flowforge.io/agent-pools annotation.",
    )
    min_agents: int = Field(0, ge=0, le=10_000, description="Never fewer agents than this (if nodes exist).")
    max_agents: int = Field(100, ge=0, le=10_000, description="Never more agents than this.")
    slots_per_agent: int = Field(4, ge=1, le=1000, description="Attempts one agent runs at once.")
    resources: AgentResources = Field(default_factory=AgentResources)
    allowed_functions: list[str] = Field(
        default_factory=list,
        description="Module globs task functions may come from, e.g. 'myteam.tasks.*'.",
    )
    prewarm: list[str] = Field(default_factory=list, description="Modules imported at agent start.")
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv)
    max_tasks_per_agent: int | None = Field(
        None, ge=1, description="An agent that ran this many attempts is replaced (bounds leaks; unset: never).",
    )
    scale_down_delay_seconds: float = Field(
        60, ge=0, le=86_400, description="Idle this long before autoscaling lowers the pool.",
    )
    drain_timeout_seconds: float = Field(
        60, ge=0, le=86_400, description="A draining agent's running attempts get this long to finish.",
    )
    target_backlog_per_slot: float | None = Field(
        None, gt=0, description="Autoscaling: add agents (up to max_agents) while queued attempts per slot "
        "exceed this (unset: no autoscaling).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> PoolConfig:
        if self.min_agents > self.max_agents:
            raise ValueError(f"min_agents ({self.min_agents}) is above max_agents ({self.max_agents})")
        return self

    @property
    def capacity(self) -> int:
        """The most slots the pool can ever have."""
        return self.max_agents * self.slots_per_agent

    def shape(self) -> routing.SlotShape:
        cpu = Decimal(str(self.resources.cpu)) / self.slots_per_agent if self.resources.cpu else Decimal(1)
        memory = (routing.quantity(self.resources.memory) / self.slots_per_agent
                  if self.resources.memory else Decimal(2**30))
        gpu = Decimal(str(self.resources.gpu)) / self.slots_per_agent
        return routing.SlotShape(self.capacity, cpu, memory, gpu)


class PoolConfigError(ValueError):
    pass


def load_dir(path: Path) -> dict[str, PoolConfig]:
    """Load every `*.yaml` in `path`; the file name must match the pool name."""
    if not path.is_dir():
        raise PoolConfigError(f"pool config folder {str(path)!r} does not exist; create it with a default.yaml")
    pools: dict[str, PoolConfig] = {}
    problems = []
    for file in sorted(path.glob("*.y*ml")):
        try:
            data = yaml.safe_load(file.read_text()) or {}
            pool = PoolConfig.model_validate(data)
        except yaml.YAMLError as exc:
            problems.append(f"{file.name}: not valid YAML: {exc}")
            continue
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(x) for x in err["loc"]) or "$"
                problems.append(f"{file.name}: {loc}: {err['msg']}")
            continue
        if pool.name != file.stem:
            problems.append(f"{file.name}: name {pool.name!r} must match the file name {file.stem!r}")
        pools[pool.name] = pool
    if problems:
        raise PoolConfigError("invalid pool config:\n  " + "\n  ".join(problems))
    if not pools:
        raise PoolConfigError(f"no pools in {str(path)!r}: add at least pool-config/default.yaml")
    return pools

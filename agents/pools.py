"""Pool configuration (`pool-config/NAME.yaml`, one pool per file) and its validation."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flowforge.domain import routing, spec


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., pattern=spec.NAME_PATTERN)
    agents: int = Field(2, ge=0, le=1000, description="Warm agents kept running.")
    slots_per_agent: int = Field(4, ge=1, le=1000, description="Attempts one agent runs at once.")
    allowed_functions: list[str] = Field(
        default_factory=list,
        description="Module globs task functions may come from, e.g. 'myteam.tasks.*'.",
    )
    prewarm: list[str] = Field(default_factory=list, description="Modules imported at agent start.")
    slot_cpu: float = Field(1.0, gt=0, le=1024, description="Cores one slot offers; tasks asking more go to Pods (auto).")
    slot_memory: str = Field("1Gi", description="Memory one slot offers, e.g. '1Gi'; tasks asking more go to Pods (auto).")

    @field_validator("slot_memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        routing.quantity(value)
        return value

    def shape(self) -> routing.SlotShape:
        return routing.SlotShape(self.capacity, Decimal(str(self.slot_cpu)), routing.quantity(self.slot_memory))

    @property
    def capacity(self) -> int:
        return self.agents * self.slots_per_agent


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

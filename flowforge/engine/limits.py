"""What an attempt in flight costs against quotas, the quotas themselves, and why an attempt
waits for one. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from flowforge.domain import quotas, routing, spec
from flowforge.engine import board


@dataclass(frozen=True, slots=True)
class Cost:
    """What one attempt in flight counts against its tenant's and project's resource quotas."""

    cpu: int = 0  # millicores
    memory: int = 0  # bytes
    gpu: int = 0  # thousandths of a GPU: a light slot may hold a fraction of its agent's GPUs


NO_COST = Cost()


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def slot_cost(shape: routing.SlotShape) -> Cost:
    """A light attempt's cost: its slot's share of the pool's agent (resources / slots)."""
    return Cost(_ceil(shape.cpu * 1000), _ceil(shape.memory), _ceil(shape.gpu * 1000))


def request_cost(resources: spec.Resources) -> Cost:
    """A heavy attempt's cost: its Pod's requests (an unset request counts 0)."""
    return Cost(
        _ceil(routing.quantity(resources.cpu) * 1000) if resources.cpu is not None else 0,
        _ceil(routing.quantity(resources.memory)) if resources.memory is not None else 0,
        resources.gpu * 1000,
    )


@dataclass(frozen=True)
class Quota:
    """Limits on what one tenant, or one project of a tenant, has in flight; None: no limit."""

    max_running_tasks: int | None = None
    max_cpu: int | None = None  # millicores
    max_memory: int | None = None  # bytes
    max_gpu: int | None = None  # GPUs

    def amounts(self) -> tuple[int, int, int, int]:
        """The limits in the units of a usage (attempts, millicores, bytes, thousandths of a
        GPU), NO_LIMIT where there is none: what the board checks."""
        return (as_limit(self.max_running_tasks), as_limit(self.max_cpu), as_limit(self.max_memory),
                as_limit(self.max_gpu * 1000 if self.max_gpu is not None else None))

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.max_running_tasks, self.max_cpu, self.max_memory, self.max_gpu))


def as_limit(value: int | None) -> int:
    """A limit as the board counts it: NO_LIMIT for none."""
    return board.NO_LIMIT if value is None else value


def _amount(limit: str, value: int) -> str:
    if limit == "max_cpu":
        return quotas.format_cores(value)
    if limit == "max_memory":
        return quotas.format_memory(value)
    if limit == "max_gpu":
        return quotas.format_gpu(value)
    return str(value)


def wait_reason(scope: tuple[str, str | None], limit: str, allowed: int, used: int, needed: int) -> str:
    """Why an attempt waits: "quota: tenant acme max_gpu 2 (2 in use)", or "quota: project
    acme/ml max_cpu 4 (3.5 in use)"; says so when the attempt alone needs more than the limit."""
    tenant, project = scope
    who = f"tenant {tenant}" if project is None else f"project {tenant}/{project}"
    text = f"quota: {who} {limit} {_amount(limit, allowed)} ({_amount(limit, used)} in use)"
    if needed > allowed:
        text += f"; the task alone needs {_amount(limit, needed)}: raise {limit} or lower its request"
    return text

"""The router: whether a task runs on a warm agent (light) or in a fresh Pod (heavy), and why.

Decided once per task at submission, from the task's spec and the shape of its pool, and
stored on the task with its reason, so what ran where is never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

from flowforge.domain import spec

LIGHT: Literal["light"] = "light"
HEAVY: Literal["heavy"] = "heavy"

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$")
_FACTORS = {
    None: 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def quantity(value: str | float | int) -> Decimal:
    """A Kubernetes resource quantity ("500m", "2", "1.5Gi", 0.5) as a number; ValueError if not one."""
    if isinstance(value, bool):
        raise ValueError("a quantity is a number or a string like '500m' or '2Gi', not a boolean")
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"{value!r} is not a quantity; write e.g. 0.5, '500m', '512Mi' or '2Gi'")
    try:
        return Decimal(match.group(1)) * _FACTORS[match.group(2)]
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise ValueError(f"{value!r} is not a quantity") from None


@dataclass(frozen=True)
class SlotShape:
    """What one slot of a pool offers, and how many slots the pool has."""

    capacity: int
    cpu: Decimal = Decimal(1)
    memory: Decimal = Decimal(2**30)
    gpu: Decimal = Decimal(0)


@dataclass(frozen=True)
class Route:
    executor: Literal["light", "heavy"]
    reason: str


def route(task: spec.TaskSpec, pools: Mapping[str, SlotShape] | None) -> Route:
    """Where `task` runs. `pools` is None when pool shapes are unknown (every pool is assumed
    to exist and fit); validation has already refused impossible combinations."""
    if task.executor == LIGHT:
        return Route(LIGHT, "executor: light")
    if task.executor == HEAVY:
        return Route(HEAVY, "executor: heavy")
    if task.image:
        return Route(HEAVY, f"runs the container image {task.image}")
    res = task.resources
    if res.gpu:
        return Route(HEAVY, f"requests {res.gpu} GPU{'s' if res.gpu != 1 else ''}")
    if pools is None:
        return Route(LIGHT, f"fits pool '{task.pool}'")
    shape = pools.get(task.pool)
    if shape is None:
        return Route(HEAVY, f"pool '{task.pool}' does not exist")
    if shape.capacity <= 0:
        return Route(HEAVY, f"pool '{task.pool}' has no agents")
    if res.cpu is not None and quantity(res.cpu) > shape.cpu:
        return Route(HEAVY, f"requests {res.cpu} CPU; a slot of pool '{task.pool}' offers {_num(shape.cpu)}")
    if res.memory is not None and quantity(res.memory) > shape.memory:
        return Route(HEAVY, f"requests {res.memory} memory; a slot of pool '{task.pool}' offers "
                            f"{_bytes(shape.memory)}")
    return Route(LIGHT, f"fits a slot of pool '{task.pool}'")


def _num(d: Decimal) -> str:
    return format(d.normalize(), "f")


def _bytes(d: Decimal) -> str:
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if d >= size and d % size == 0:
            return f"{d // size}{unit}"
    return _num(d)

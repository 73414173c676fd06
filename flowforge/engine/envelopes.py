"""What a dispatched attempt carries to its pool: the envelope an agent or the Pod launcher
reads (function, arguments, secrets to redact, the Pod's needs), wrapped as a scheduler item."""

from __future__ import annotations

import functools
from typing import Any

from flowforge.domain import machine, model, spec
from flowforge.domain.model import Run
from flowforge.engine import limits, scheduling


def ready_item(run: Run, partition: int, task: model.Task, fx: machine.Enqueue, now: float,
               cost: limits.Cost = limits.NO_COST) -> scheduling.Ready:
    """An attempt ready for its pool, with the envelope its agent (or Pod launcher) reads."""
    envelope: dict[str, Any] = {
        "tenant": run.tenant,
        "run": run.run_id,
        "task": task.key,
        "attempt": task.attempt,
        "part": partition,
        "pool": fx.pool,
        "fn": fx.fn,
        "args": fx.args,
        "timeout": fx.timeout,
        "map_index": task.map_index,
        "queued_at": now,
    }
    secrets = run.dag.spec.secrets(run.params)
    if secrets:
        envelope["redact"] = secrets  # the agent scrubs them from the attempt's output and error
    if fx.pool == model.HEAVY_POOL:
        envelope["pod"] = pod_request(run.dag.tasks[task.name])
    return scheduling.Ready(run.run_id, partition, run.tenant, task.key, task.attempt, fx.pool, envelope,
                            run.dag.tasks[task.name].priority, run.project, cost)


@functools.lru_cache(maxsize=4096)
def request_cost(resources: spec.Resources) -> limits.Cost:
    """A heavy attempt's quota cost (its Pod's requests), cached per distinct request."""
    return limits.request_cost(resources)


def pod_request(t: spec.TaskSpec) -> dict[str, Any]:
    """What a heavy attempt's Pod runs and needs, as the launcher reads it from the envelope."""
    return {
        "image": t.image, "command": t.command, "env": t.env, "pool": t.pool,
        "resources": t.resources.model_dump(exclude_none=True),
        "node_selector": t.node_selector,
        "tolerations": [x.model_dump(exclude_none=True) for x in t.tolerations],
    }

"""The DAG spec: what a user writes (YAML, JSON or the Python SDK) and what the engine runs.

These models check the shape of one field at a time; `validation` checks the DAG as a whole
(names, cycles, references, expressions, limits) and reports every problem at once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$"
FN_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"

Executor = Literal["light", "heavy", "auto"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """Bounds every DAG must stay within; the operator may raise or lower them."""

    max_tasks: int = Field(10_000, ge=1, description="Tasks per DAG.")
    max_fanout: int = Field(10_000, ge=1, description="Instances one `map` task may create.")
    max_payload_bytes: int = Field(
        1 << 20, ge=1024, description="Encoded size of params, args and one task output."
    )
    max_retries: int = Field(100, ge=0, description="Largest allowed `retries.limit`.")
    max_timeout_seconds: float = Field(7 * 86_400, gt=0, description="Largest `timeout_seconds`.")


class RetryPolicy(_Strict):
    """How failed attempts are retried. `limit` counts retries, so attempts = limit + 1."""

    limit: int = Field(0, ge=0)
    backoff: Literal["exponential", "fixed"] = "exponential"
    base_seconds: float = Field(1.0, ge=0, le=86_400)
    factor: float = Field(2.0, ge=1, le=100)
    max_seconds: float = Field(300.0, ge=0, le=7 * 86_400)
    jitter: float = Field(0.1, ge=0, le=1, description="Fraction of the delay drawn at random.")


class MapSpec(_Strict):
    """Fan out one task instance per item of a list: `over` is a reference to that list."""

    over: str = Field(..., description="e.g. '{{ tasks.list_files.output }}' or '{{ params.items }}'")
    max_items: int = Field(1_000, ge=1, description="Cap on instances; a longer list fails the task.")


def _quantity(value: Any) -> Any:
    from flowforge.domain.routing import quantity

    if value is not None:
        quantity(value)  # raises ValueError with the fix
    return value


Quantity = Annotated[str | float | int | None, AfterValidator(_quantity)]
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


class Resources(_Strict):
    """What one attempt needs. A heavy task's Pod requests (and is limited to) these; `auto`
    routes a task to a Pod when they exceed one slot of its pool."""

    cpu: Quantity = Field(None, description="Cores: 0.5, '500m', 2.")
    memory: Quantity = Field(None, description="Bytes: '512Mi', '2Gi'.")
    gpu: int = Field(0, ge=0, le=16, description="nvidia.com/gpu devices.")


class Toleration(_Strict):
    key: str | None = Field(None, max_length=253)
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = Field(None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)


class TaskSpec(_Strict):
    name: str = Field(..., pattern=NAME_PATTERN)
    fn: str | None = Field(None, pattern=FN_PATTERN, description="'package.module:function'")
    args: list[Any] | dict[str, Any] = Field(
        default_factory=list,
        description="Positional (list) or keyword (mapping) arguments; for a container, its args (strings).",
    )
    depends: list[str] = Field(default_factory=list)
    when: str | None = None
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_seconds: float | None = Field(None, gt=0)
    executor: Executor = "light"
    pool: str = Field("default", pattern=NAME_PATTERN)
    priority: int = Field(0, ge=-100, le=100, description="Within its tenant, higher runs first.")
    map: MapSpec | None = None
    image: str | None = Field(None, min_length=1, max_length=512, pattern=r"^\S+$",
                              description="A container image: the task runs it in a fresh Pod.")
    command: list[str] | None = Field(None, max_length=256, description="The container's entry point.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables of a heavy task.")
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels a heavy task's Pod needs.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)


def secret_values(names: list[str], params: dict[str, Any]) -> list[str]:
    """The values of the secret params `names`, as they would appear in text (values shorter
    than 4 characters are not scrubbed: replacing them everywhere would garble the text)."""
    found = []
    for name in names:
        value = params.get(name)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and len(str(value)) >= 4:
            found.append(str(value))
    return found


class DagSpec(_Strict):
    name: str = Field(..., pattern=NAME_PATTERN)
    description: str = Field("", max_length=4_000)
    params: dict[str, Any] = Field(default_factory=dict)
    secret_params: list[str] = Field(
        default_factory=list, max_length=100,
        description="Params whose values are secret: masked in API responses, redacted from task output.",
    )
    tasks: list[TaskSpec] = Field(..., min_length=1)

    def secrets(self, params: dict[str, Any]) -> list[str]:
        return secret_values(self.secret_params, params)

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

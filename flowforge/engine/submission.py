"""Submitting runs and run commands (cancel, retry): validate, store in one transaction with
an outbox event, then publish that event at once. If the publish fails, the reconciler
relays it from the outbox later, so a submission that returned is never lost."""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from flowforge import errors, keys, ports, wire
from flowforge.domain import ids, refs, routing, spec, validation

log = structlog.get_logger("flowforge.submission")
DAG_TASKS_RETRY_S = 60.0  # Retry-After of a DAG over max_dag_tasks: only a raised limit helps


class SubmitStore(Protocol):
    async def create_run(self, **kwargs: Any) -> int: ...

    async def submission_limits(self, tenant: str, project: str) -> dict[str, dict[str, int | None]]: ...

    async def add_event(
        self, tenant: str, partition: int, make_event: Callable[[int], bytes], **kwargs: Any
    ) -> tuple[int, bytes]: ...

    async def mark_published(self, ids: list[int]) -> None: ...


class DagVersions(Protocol):
    async def put_version(self, tenant: str, project: str, dag: spec.DagSpec, *, template: bool,
                          create_only: bool = False) -> Any: ...

    async def get_template(self, tenant: str, project: str, name: str, version: int | None = None) -> Any: ...


def dag_size(dag: spec.DagSpec, params: Mapping[str, Any]) -> tuple[int, str]:
    """How many tasks a run of `dag` makes, as far as submission can know, and what was
    counted: each task once, except a mapped task over a list known now (from params), which
    counts its items (at least 1). A map over an upstream output counts 1: its size is known
    only when that task ends (`map.max_items` bounds it)."""
    total, known, unknown = 0, 0, 0
    for t in dag.tasks:
        if t.map is None:
            total += 1
            continue
        size = None
        try:
            found = refs.references(t.map.over)
            if found and all(r.kind == "params" for r in found):
                items = refs.resolve(t.map.over, params=params, outputs={})
                size = len(items) if isinstance(items, list) else None
        except (refs.RefError, ValueError, TypeError, KeyError, IndexError):
            size = None
        if size is None:
            unknown += 1
            total += 1
        else:
            known += 1
            total += max(1, size)
    what = f"{len(dag.tasks)} task{'s' if len(dag.tasks) != 1 else ''} in the spec"
    if known:
        what += f", with the instances of {known} map{'s' if known != 1 else ''} over params"
    if unknown:
        what += f"; {unknown} map{'s' if unknown != 1 else ''} over task outputs counted as 1 each"
    return total, what


@dataclass(frozen=True)
class Submitted:
    run_id: str
    dag: str
    version: int


class Submitter:
    def __init__(
        self,
        store: SubmitStore,
        dags: DagVersions,
        queue: ports.WorkQueue,
        *,
        partitions: int,
        limits: spec.Limits = spec.Limits(),
        pools: Mapping[str, int | routing.SlotShape] | None = None,
        heavy: bool = False,
    ) -> None:
        self.store = store
        self.dags = dags
        self.queue = queue
        self.partitions = partitions
        self.limits = limits
        # pool name -> its shape (or just its slots); None accepts any pool
        self.pools = None if pools is None else {
            name: p if isinstance(p, routing.SlotShape) else routing.SlotShape(capacity=p) for name, p in pools.items()
        }
        self.heavy = heavy  # whether heavy tasks have a Pod runtime to run on
        # Inline specs already stored: (tenant, project, canonical JSON) -> stored version.
        self._inline: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self._published: list[int] = []
        self._marking: asyncio.Task[None] | None = None

    def validate(self, dag: Any, params: Mapping[str, Any] | None = None) -> tuple[spec.DagSpec, dict[str, Any]]:
        """Parse and check a DAG and its params; raises validation.SpecError with every problem."""
        parsed = dag if isinstance(dag, spec.DagSpec) else validation.parse_dag(dag, self.limits)
        problems = []
        for i, t in enumerate(parsed.tasks):
            chosen = routing.route(t, self.pools)
            if chosen.executor == "heavy" and not self.heavy:
                problems.append(validation.Problem(
                    f"tasks[{i}].executor", f"the task needs a fresh Pod ({chosen.reason}), but no Pod runtime "
                    "is enabled here", "set pods.runtime (local or kubernetes), or make the task fit a pool",
                ))
            elif chosen.executor == "light" and self.pools is not None:
                if t.pool not in self.pools:
                    problems.append(validation.Problem(
                        f"tasks[{i}].pool", f"unknown pool '{t.pool}'",
                        f"use one of: {', '.join(sorted(self.pools))}, or add pool-config/{t.pool}.yaml",
                    ))
                elif self.pools[t.pool].capacity <= 0:
                    problems.append(validation.Problem(
                        f"tasks[{i}].pool", f"pool '{t.pool}' has no agents, so the task would never run",
                        f"set agents above 0 in pool-config/{t.pool}.yaml, or use another pool",
                    ))
        try:
            merged = validation.merge_params(parsed, params or {}, self.limits)
        except validation.SpecError as exc:
            problems.extend(exc.problems)
            merged = {}
        if problems:
            raise validation.SpecError(problems)
        return parsed, merged

    async def submit(
        self,
        dag: Any,
        params: Mapping[str, Any] | None = None,
        *,
        tenant: str = "default",
        project: str = "default",
    ) -> str:
        """Run an inline DAG (a spec, a dict, YAML or JSON text); return the run id."""
        return (await self.submit_inline(dag, params, tenant=tenant, project=project)).run_id

    async def submit_inline(
        self, dag: Any, params: Mapping[str, Any] | None = None, *, tenant: str, project: str = "default"
    ) -> Submitted:
        parsed, merged = self.validate(dag, params)
        key = (tenant, project, parsed.model_dump_json())
        stored = self._inline.get(key)
        if stored is not None:  # inline versions are immutable; they go only with their project
            try:
                return await self._create(tenant, project, stored.id, parsed, stored.version, merged)
            except errors.NotFound:
                self._inline.pop(key, None)  # its project was deleted (and maybe made anew)
        stored = self._inline[key] = await self.dags.put_version(tenant, project, parsed, template=False)
        if len(self._inline) > 1000:
            self._inline.popitem(last=False)
        return await self._create(tenant, project, stored.id, parsed, stored.version, merged)

    async def submit_template(
        self, name: str, version: int | None = None, params: Mapping[str, Any] | None = None, *,
        tenant: str, project: str = "default",
    ) -> Submitted:
        """Run a stored template, its latest version unless `version` is given."""
        stored = await self.dags.get_template(tenant, project, name, version)
        parsed, merged = self.validate(spec.DagSpec.model_validate(stored.spec), params)
        return await self._create(tenant, project, stored.id, parsed, stored.version, merged)

    async def _create(self, tenant: str, project: str, dag_id: str, parsed: spec.DagSpec, version: int,
                      merged: dict[str, Any]) -> Submitted:
        limits = await self.store.submission_limits(tenant, project)
        self._check_size(parsed, merged, tenant, project, limits)
        run_id = str(uuid.uuid4())
        partition = keys.partition_of(run_id, self.partitions)
        event = wire.pack(wire.RUN_CREATED, run=run_id, tenant=tenant)
        outbox_id = await self.store.create_run(
            run_id=run_id, tenant=tenant, project=project, dag_id=dag_id, dag=parsed, version=version,
            params=merged, partition=partition, event=event,
            routes={t.name: routing.route(t, self.pools) for t in parsed.tasks},
            max_active_runs=(limits["tenant"]["max_active_runs"], limits["project"]["max_active_runs"]),
        )
        await self._publish(partition, event, outbox_id)
        return Submitted(run_id, parsed.name, version)

    @staticmethod
    def _check_size(parsed: spec.DagSpec, merged: Mapping[str, Any], tenant: str, project: str,
                    limits: Mapping[str, Mapping[str, int | None]]) -> None:
        """QuotaExceeded if the run would have more tasks than the tenant's or the project's
        max_dag_tasks."""
        scopes = ((f"tenant {tenant}", limits["tenant"]["max_dag_tasks"], f" (flowforge tenants limits {tenant} "
                   "--max-dag-tasks N)"), (f"project {tenant}/{project}", limits["project"]["max_dag_tasks"], ""))
        if all(limit is None for _, limit, _ in scopes):
            return
        size, counted = dag_size(parsed, merged)
        for who, limit, how in scopes:
            if limit is not None and size > limit:
                raise errors.QuotaExceeded(
                    "max_dag_tasks",
                    f"the run would have {size} tasks ({counted}); {who} allows at most {limit} per run",
                    f"split the DAG, or map over smaller lists; or ask the operator to raise max_dag_tasks{how}",
                    retry_after=DAG_TASKS_RETRY_S,
                )

    async def cancel(self, run_id: str, *, tenant: str = "default") -> None:
        """Ask a pending or running run to stop. NotFound, or Conflict if it already ended."""
        await self._command(run_id, tenant, wire.RUN_CANCEL, ("pending", "running"), cancel=True)

    async def retry(self, run_id: str, *, tenant: str = "default") -> None:
        """Run a failed or cancelled run's unfinished tasks again. NotFound, or Conflict."""
        await self._command(run_id, tenant, wire.RUN_RETRY, ("failed", "cancelled"), reactivate=True)

    async def _command(self, run_id: str, tenant: str, kind: str, allowed: tuple[str, ...], *,
                       cancel: bool = False, reactivate: bool = False) -> None:
        run_id = ids.run_id(run_id)
        partition = keys.partition_of(run_id, self.partitions)

        def make_event(retries: int) -> bytes:
            # The run's generation makes the command idempotent: relayed twice, it applies once.
            return wire.pack(kind, run=run_id, tenant=tenant, n=retries)

        outbox_id, event = await self.store.add_event(
            tenant, partition, make_event, run_id=run_id, allowed=allowed, cancel=cancel,
            **({"reactivate": True} if reactivate else {}),
        )
        await self._publish(partition, event, outbox_id)

    async def _publish(self, partition: int, event: bytes, outbox_id: int) -> None:
        try:
            await self.queue.publish_events([(partition, event)])
        except errors.TemporaryError as exc:
            log.warning("submission.publish_deferred", error=str(exc), outbox=outbox_id)
            return
        # Marking rows published is batched off the request path; a mark lost in a crash only
        # makes the reconciler publish the event again, which changes nothing.
        self._published.append(outbox_id)
        if self._marking is None or self._marking.done():
            self._marking = asyncio.create_task(self._mark_published())

    async def _mark_published(self) -> None:
        pause, failures = 0.05, 0
        await asyncio.sleep(pause)
        while self._published:
            marking, self._published = self._published, []
            try:
                await self.store.mark_published(marking)
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("submission.mark_published_failed", error=str(exc), events=len(marking),
                            failures=failures)
                if failures >= 5:
                    # The reconciler relays whatever stays unmarked; commands carry their
                    # generation, so a relayed duplicate changes nothing.
                    return
                self._published[:0] = marking
                await asyncio.sleep(pause * 2**failures)

    async def aclose(self) -> None:
        """Finish marking published events."""
        if self._marking is not None:
            await asyncio.gather(self._marking, return_exceptions=True)

"""The state of one run as the state machine sees it: a compiled DAG, task states and counters.

`Task` is a frozen value; a `Run` maps task keys to them and keeps counters so the machine can
tell in O(1) whether the run has ended. A task key is the task name, or `name[i]` for instance
`i` of a mapped task.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from flowforge.domain import expressions, graph, refs, spec
from flowforge.domain.states import TASK_TERMINAL, RunStatus, TaskStatus

TIMER_RETRY = "retry"
TIMER_DEADLINE = "deadline"
TIMER_CANCEL = "cancel"
TIMER_EXPAND = "expand"  # a mapped parent with instances still to create: due at once


@dataclass(frozen=True, slots=True)
class Task:
    key: str
    name: str
    status: TaskStatus = TaskStatus.PENDING
    attempt: int = 0  # the current attempt's number; 0 before the first
    retry_base: int = 0  # attempts made before the current retry budget (a run retry resets it)
    infra_failures: int = 0  # attempts lost to the platform (evicted, preempted): off the budget
    map_index: int | None = None
    output: Any = None
    error: str | None = None
    timer: str | None = None  # TIMER_* kind of the armed timer, if any
    timer_at: float | None = None
    instances: int | None = None  # a mapped parent: how many instances it has (some may be still to create)
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None

    def evolve(self, **changes: Any) -> Task:
        return dataclasses.replace(self, **changes)

    @property
    def terminal(self) -> bool:
        return self.status in TASK_TERMINAL


HEAVY_POOL = "~pods"  # the dispatch "pool" of heavy attempts: `~` is never in a pool name


def instance_key(name: str, index: int) -> str:
    return f"{name}[{index}]"


@dataclass(frozen=True)
class CompiledDag:
    """A validated spec with everything the machine needs precomputed."""

    spec: spec.DagSpec
    graph: graph.Graph
    tasks: dict[str, spec.TaskSpec]
    when_tasks: dict[str, frozenset[str]]  # task -> tasks its `when` reads
    _ancestors: dict[str, frozenset[str]] = field(default_factory=dict, repr=False, compare=False)

    def ancestors(self, name: str) -> frozenset[str]:
        found = self._ancestors.get(name)
        if found is None:
            found = self._ancestors[name] = self.graph.ancestors(name)
        return found


def compile_dag(dag: spec.DagSpec) -> CompiledDag:
    return CompiledDag(
        spec=dag,
        graph=graph.build({t.name: t.depends for t in dag.tasks}),
        tasks={t.name: t for t in dag.tasks},
        when_tasks={t.name: expressions.check(t.when) for t in dag.tasks if t.when},
    )


@dataclass
class Run:
    """One run's state. The machine mutates it in place and reports what it changed."""

    run_id: str
    tenant: str
    dag: CompiledDag
    params: dict[str, Any]
    status: RunStatus = RunStatus.PENDING
    project: str = "default"
    cancel_requested: bool = False
    retries: int = 0  # run retries applied so far: the generation cancel and retry events name
    heavy: frozenset[str] = frozenset()  # names of tasks the router sent to fresh Pods
    tasks: dict[str, Task] = field(default_factory=dict)
    error: str | None = None
    # Counters kept in step with `tasks` by `put`, so "has the run ended?" is O(1).
    open_tasks: int = 0
    failed_tasks: int = 0
    map_open: dict[str, int] = field(default_factory=dict)  # mapped task -> unfinished instances
    map_made: dict[str, int] = field(default_factory=dict)  # mapped task -> instances created so far
    map_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def new(cls, run_id: str, tenant: str, dag: CompiledDag, params: dict[str, Any],
            heavy: frozenset[str] = frozenset(), project: str = "default") -> Run:
        run = cls(run_id=run_id, tenant=tenant, dag=dag, params=params, heavy=heavy, project=project)
        for name in dag.graph.order:
            run.put(Task(key=name, name=name))
        return run

    @classmethod
    def restore(
        cls,
        *,
        run_id: str,
        tenant: str,
        dag: CompiledDag,
        params: dict[str, Any],
        status: RunStatus,
        cancel_requested: bool,
        tasks: list[Task],
        error: str | None = None,
        retries: int = 0,
        heavy: frozenset[str] = frozenset(),
        project: str = "default",
    ) -> Run:
        run = cls(
            run_id=run_id,
            tenant=tenant,
            project=project,
            dag=dag,
            params=params,
            status=status,
            cancel_requested=cancel_requested,
            retries=retries,
            heavy=heavy,
            error=error,
        )
        for t in tasks:
            run.put(t)
        return run

    def executor(self, name: str) -> str:
        return "heavy" if name in self.heavy else "light"

    def dispatch_pool(self, name: str) -> str:
        """Where attempts of task `name` are dispatched: its pool's stream, or the Pod launcher's."""
        return HEAVY_POOL if name in self.heavy else self.dag.tasks[name].pool

    def put(self, task: Task) -> Task | None:
        before = self.tasks.get(task.key)
        if before is not None:
            self._count(before, -1)
        elif task.map_index is not None:  # instances are created in index order
            self.map_made[task.name] = self.map_made.get(task.name, 0) + 1
        self.tasks[task.key] = task
        self._count(task, +1)
        return before

    def _count(self, task: Task, sign: int) -> None:
        if not task.terminal:
            self.open_tasks += sign
            if task.map_index is not None:
                self.map_open[task.name] = self.map_open.get(task.name, 0) + sign
        elif task.status in (TaskStatus.FAILED, TaskStatus.UPSTREAM_FAILED):
            self.failed_tasks += sign

    def instances(self, name: str) -> list[Task]:
        """The instances of mapped task `name` created so far, in index order."""
        return [self.tasks[instance_key(name, i)] for i in range(self.map_made.get(name, 0))]

    def expanding(self, name: str) -> bool:
        """Whether mapped task `name` still has instances to create."""
        parent = self.tasks[name]
        return parent.timer == TIMER_EXPAND and self.map_made.get(name, 0) < (parent.instances or 0)

    def outputs(self) -> dict[str, Any]:
        """Outputs of succeeded spec-level tasks, for resolving references."""
        return {
            name: self.tasks[name].output
            for name in self.dag.tasks
            if self.tasks[name].status == TaskStatus.SUCCEEDED
        }

    def upstream_view(self, name: str) -> dict[str, dict[str, Any]]:
        """What a `when` may read: output and status of the task's ancestors."""
        view = {}
        for up in self.dag.ancestors(name) | self.dag.when_tasks.get(name, frozenset()):
            t = self.tasks.get(up)
            if t is not None:
                view[up] = {"output": t.output, "status": str(t.status)}
        return view


def resolve_args(run: Run, task: Task) -> Any:
    """Arguments of `task` with references replaced; raises refs.RefError."""
    tspec = run.dag.tasks[task.name]
    outputs = {up: run.tasks[up].output for up in run.dag.ancestors(task.name)}
    if task.map_index is None:
        return refs.resolve(tspec.args, params=run.params, outputs=outputs)
    item = map_items(run, task.name)[task.map_index]
    return refs.resolve(tspec.args, params=run.params, outputs=outputs, item=item)


def map_items(run: Run, name: str) -> Any:
    """The value a mapped task fans out over (a list when valid); resolved once per run."""
    cached = run.map_cache.get(name)
    if cached is None:
        tspec = run.dag.tasks[name]
        assert tspec.map is not None
        outputs = {up: run.tasks[up].output for up in run.dag.ancestors(name)}
        cached = run.map_cache[name] = refs.resolve(tspec.map.over, params=run.params, outputs=outputs)
    return cached

"""The run state machine: `advance(run, event, now, config) -> effects`.

Deciding is pure: no I/O, no clock (time comes in as `now`), no global randomness (retry
jitter is seeded by the attempt's identity). The machine updates the `Run` it is given and
returns the effects for the engine to apply in one place: task and attempt rows to write
(each a compare-and-set on status and attempt number), attempts to enqueue, attempts to stop,
timers to arm. Events about an attempt that is no longer current (a duplicate result, a
stale timer) change nothing and return no effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flowforge.domain import expressions, model, refs, retry
from flowforge.domain.model import TIMER_CANCEL, TIMER_DEADLINE, TIMER_EXPAND, TIMER_RETRY, Run, Task
from flowforge.domain.states import TASK_ACTIVE, RunStatus, TaskStatus

S = TaskStatus


@dataclass(frozen=True)
class Config:
    deadline_grace: float = 30.0  # seconds past a timeout before a silent attempt is failed
    cancel_grace: float = 10.0  # seconds a running attempt has to stop after a cancel
    infra_retries: int = 3  # attempts lost to the platform retried per task, off its retry budget
    # Instances of a mapped task created per step: the rest follow in later steps (a timer due at
    # once), so fanning out a large list never holds a coordinator for long. 0: all at once.
    expand_chunk: int = 32


REASON_INFRASTRUCTURE = "infrastructure"  # the Pod was evicted or preempted, or its node was lost


# ---- events (in) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """The run was created, or is being reconciled: settle every task that can move."""


@dataclass(frozen=True)
class Started:
    key: str
    attempt: int
    agent: str | None = None
    at: float | None = None  # when the agent started it (its clock); else when we heard


@dataclass(frozen=True)
class Finished:
    key: str
    attempt: int
    ok: bool
    output: Any = None
    error: str | None = None
    reason: str = "error"  # wire.FAIL_* when not ok
    retryable: bool = True
    started_at: float | None = None
    finished_at: float | None = None  # the agent's clock; durations come from its two stamps
    agent: str | None = None
    logs: tuple[Any, ...] = ()


@dataclass(frozen=True)
class TimerDue:
    key: str
    attempt: int
    kind: str


@dataclass(frozen=True)
class Cancel:
    """Stop the run. `retries` is the run's retry count when the cancel was asked: a cancel of
    an earlier generation (a relayed duplicate) is ignored. None: whatever generation."""

    retries: int | None = None


@dataclass(frozen=True)
class Retry:
    """Run failed, cancelled and upstream_failed tasks again as new attempts. `retries` is the
    run's retry count when the retry was asked; it applies once, to that generation."""

    retries: int | None = None


Event = Start | Started | Finished | TimerDue | Cancel | Retry

# ---- effects (out) -----------------------------------------------------------------------


@dataclass(frozen=True)
class TaskChanged:
    before: Task | None  # None: a new task row (an instance of a mapped task)
    after: Task


@dataclass(frozen=True)
class AttemptChanged:
    """Create or update one attempt row; None fields are left as they are."""

    key: str
    attempt: int
    status: str  # queued | running | succeeded | failed | cancelled
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    agent: str | None = None
    error: str | None = None
    reason: str | None = None
    logs: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Enqueue:
    task: Task
    pool: str
    fn: str | None
    args: Any
    timeout: float | None


@dataclass(frozen=True)
class StopAttempt:
    key: str
    attempt: int


@dataclass(frozen=True)
class ArmTimer:
    key: str
    attempt: int
    kind: str
    at: float


@dataclass(frozen=True)
class RunChanged:
    before: RunStatus
    after: RunStatus
    error: str | None = None


Effect = TaskChanged | AttemptChanged | Enqueue | StopAttempt | ArmTimer | RunChanged


# ---- the machine -------------------------------------------------------------------------


@dataclass
class _Step:
    run: Run
    now: float
    config: Config
    effects: list[Effect] = field(default_factory=list)
    to_settle: list[str] = field(default_factory=list)

    def set(self, task: Task, **changes: Any) -> Task:
        after = task.evolve(**changes)
        self.run.put(after)
        self.effects.append(TaskChanged(task, after))
        if after.terminal and not task.terminal:
            self._ended(after)
        return after

    def _ended(self, task: Task) -> None:
        if task.map_index is not None:
            self.to_settle.append(task.name)  # the parent may be done
        else:
            self.to_settle.extend(self.run.dag.graph.downstream[task.name])


def advance(run: Run, event: Event, now: float, config: Config = Config()) -> list[Effect]:
    step = _Step(run, now, config)
    if run.status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED) and not isinstance(
        event, Retry
    ):
        return []
    match event:
        case Start():
            _start(step)
        case Started():
            _started(step, event)
        case Finished():
            _finished(step, event)
        case TimerDue():
            _timer(step, event)
        case Cancel():
            if event.retries is None or event.retries == run.retries:
                _cancel(step)
        case Retry():
            if event.retries is None or event.retries == run.retries:
                _retry(step)
    _drain(step)
    _finish_run(step)
    return step.effects


def _current(run: Run, key: str, attempt: int) -> Task | None:
    """The task if `attempt` is its current attempt; None for stale or unknown events."""
    task = run.tasks.get(key)
    if task is None or task.attempt != attempt:
        return None
    return task


def _start(step: _Step) -> None:
    run = step.run
    if run.status == RunStatus.PENDING:
        _set_run(step, RunStatus.RUNNING)
    if run.cancel_requested:
        _cancel(step)
        return
    for name in run.dag.graph.order:
        if run.tasks[name].status == S.PENDING:
            step.to_settle.append(name)


def _started(step: _Step, ev: Started) -> None:
    task = _current(step.run, ev.key, ev.attempt)
    if task is None or task.status != S.QUEUED:
        return
    timer = timer_at = None
    timeout = step.run.dag.tasks[task.name].timeout_seconds
    if timeout is not None:
        timer, timer_at = TIMER_DEADLINE, step.now + timeout + step.config.deadline_grace
    if step.run.cancel_requested:
        timer, timer_at = TIMER_CANCEL, step.now + step.config.cancel_grace
    started_at = ev.at or step.now
    step.set(task, status=S.RUNNING, started_at=started_at, timer=timer, timer_at=timer_at)
    step.effects.append(AttemptChanged(ev.key, ev.attempt, "running", started_at=started_at, agent=ev.agent))
    if timer is not None:
        step.effects.append(ArmTimer(ev.key, ev.attempt, timer, timer_at))


def _finished(step: _Step, ev: Finished) -> None:
    task = _current(step.run, ev.key, ev.attempt)
    if task is None or task.status not in TASK_ACTIVE:
        return
    started_at = ev.started_at or task.started_at or step.now
    finished_at = max(ev.finished_at or step.now, started_at)
    closed = dict(finished_at=finished_at, started_at=started_at, agent=ev.agent, logs=ev.logs)
    if ev.ok:
        step.effects.append(AttemptChanged(ev.key, ev.attempt, "succeeded", **closed))
        step.set(
            task, status=S.SUCCEEDED, output=ev.output, error=None, timer=None, timer_at=None,
            started_at=started_at, finished_at=finished_at,
        )
        return
    if step.run.cancel_requested:
        step.effects.append(
            AttemptChanged(ev.key, ev.attempt, "cancelled", error=ev.error, reason=ev.reason, **closed)
        )
        step.set(task, status=S.CANCELLED, error=ev.error, timer=None, timer_at=None, finished_at=finished_at)
        return
    step.effects.append(
        AttemptChanged(ev.key, ev.attempt, "failed", error=ev.error, reason=ev.reason, **closed)
    )
    if ev.reason == REASON_INFRASTRUCTURE and ev.retryable and task.infra_failures < step.config.infra_retries:
        # Not the task's fault: run it again at once, without spending its retry budget.
        _queue(step, task, infra_failures=task.infra_failures + 1, retry_base=task.retry_base + 1)
        return
    policy = step.run.dag.tasks[task.name].retries
    tried = task.attempt - task.retry_base  # attempts of this budget, this one included
    if ev.retryable and retry.retries_left(policy, tried):
        seed = f"{step.run.run_id}/{task.key}/{task.attempt}"
        at = step.now + retry.backoff_seconds(policy, tried, seed=seed)
        step.set(task, status=S.RETRYING, error=ev.error, timer=TIMER_RETRY, timer_at=at)
        step.effects.append(ArmTimer(task.key, task.attempt, TIMER_RETRY, at))
    else:
        step.set(task, status=S.FAILED, error=ev.error, timer=None, timer_at=None, finished_at=finished_at)


def _timer(step: _Step, ev: TimerDue) -> None:
    task = _current(step.run, ev.key, ev.attempt)
    if task is None or task.timer != ev.kind:
        return
    if ev.kind == TIMER_RETRY and task.status == S.RETRYING:
        _queue(step, task)
    elif ev.kind == TIMER_DEADLINE and task.status == S.RUNNING:
        timeout = step.run.dag.tasks[task.name].timeout_seconds
        step.effects.append(StopAttempt(task.key, task.attempt))
        _finished(
            step,
            Finished(
                task.key, task.attempt, ok=False, reason="timeout",
                error=f"timed out: no result {timeout}s after the attempt started",
            ),
        )
    elif ev.kind == TIMER_EXPAND and task.status == S.RUNNING:
        _expand(step, task)
    elif ev.kind == TIMER_CANCEL and task.status == S.RUNNING:
        error = f"cancelled: the attempt did not stop within {step.config.cancel_grace:g}s"
        step.effects.append(
            AttemptChanged(task.key, task.attempt, "cancelled", finished_at=step.now, error=error, reason="cancelled")
        )
        step.set(task, status=S.CANCELLED, error=error, timer=None, timer_at=None, finished_at=step.now)


def _cancel(step: _Step) -> None:
    run = step.run
    run.cancel_requested = True
    for task in list(run.tasks.values()):
        if task.terminal:
            continue
        if task.status == S.RUNNING and task.attempt > 0:
            if task.timer == TIMER_CANCEL:
                continue  # already asked to stop; keep the first deadline
            at = step.now + step.config.cancel_grace
            step.effects.append(StopAttempt(task.key, task.attempt))
            step.set(task, timer=TIMER_CANCEL, timer_at=at)
            step.effects.append(ArmTimer(task.key, task.attempt, TIMER_CANCEL, at))
        elif task.status == S.RUNNING:
            _expand(step, task)  # a mapped parent: makes no more, and ends when those made have
        else:
            if task.status == S.QUEUED:
                step.effects.append(StopAttempt(task.key, task.attempt))
                step.effects.append(
                    AttemptChanged(task.key, task.attempt, "cancelled", finished_at=step.now,
                                   error="cancelled before it started", reason="cancelled")
                )
            step.set(task, status=S.CANCELLED, timer=None, timer_at=None, finished_at=step.now)


def _retry(step: _Step) -> None:
    run = step.run
    if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
        return
    run.cancel_requested = False
    run.error = None
    run.retries += 1
    _set_run(step, RunStatus.RUNNING)
    again = (S.FAILED, S.CANCELLED, S.UPSTREAM_FAILED)
    for name in run.dag.graph.order:
        task = run.tasks[name]
        if task.status not in again:
            continue
        if task.instances:
            for inst in run.instances(name):
                if inst.status in again:
                    _queue(step, step.set(inst, retry_base=inst.attempt))
            # The parent runs again, and makes what a cancel stopped it from making, if anything.
            _expand(step, step.set(task, status=S.RUNNING, error=None, finished_at=None))
        else:
            step.set(task, status=S.PENDING, error=None, finished_at=None, retry_base=task.attempt)
            step.to_settle.append(name)


def _drain(step: _Step) -> None:
    """Settle tasks whose upstreams (or instances) may have ended, until nothing moves."""
    run = step.run
    while step.to_settle:
        name = step.to_settle.pop()
        task = run.tasks[name]
        if task.status == S.PENDING:
            _settle(step, task)
        elif (task.status == S.RUNNING and task.instances is not None and run.map_open.get(name, 0) == 0
              and not run.expanding(name)):
            _collect(step, task)


def _settle(step: _Step, task: Task) -> None:
    run = step.run
    ups = [run.tasks[u] for u in run.dag.graph.upstream[task.name]]
    if any(not u.terminal for u in ups):
        return
    if run.cancel_requested:
        step.set(task, status=S.CANCELLED, finished_at=step.now)
        return
    bad = next((u for u in ups if u.status in (S.FAILED, S.UPSTREAM_FAILED, S.CANCELLED)), None)
    if bad is not None:
        step.set(task, status=S.UPSTREAM_FAILED, error=f"upstream '{bad.key}' {bad.status}", finished_at=step.now)
        return
    skipped = next((u for u in ups if u.status == S.SKIPPED), None)
    if skipped is not None:
        step.set(task, status=S.SKIPPED, error=f"upstream '{skipped.key}' was skipped", finished_at=step.now)
        return
    tspec = run.dag.tasks[task.name]
    if tspec.when:
        try:
            go = expressions.evaluate(tspec.when, params=run.params, tasks=run.upstream_view(task.name))
        except expressions.ExpressionError as exc:
            step.set(task, status=S.FAILED, error=f"when: {exc}", finished_at=step.now)
            return
        if not go:
            step.set(task, status=S.SKIPPED, error=f"when was false: {tspec.when}", finished_at=step.now)
            return
    if tspec.map is None:
        _queue(step, task)
    else:
        _fan_out(step, task)


def _fan_out(step: _Step, task: Task) -> None:
    run = step.run
    mspec = run.dag.tasks[task.name].map
    assert mspec is not None
    try:
        items = model.map_items(run, task.name)
    except refs.RefError as exc:
        step.set(task, status=S.FAILED, error=f"map.over: {exc}", finished_at=step.now)
        return
    if not isinstance(items, list):
        step.set(task, status=S.FAILED, finished_at=step.now,
                 error=f"map.over must resolve to a list, got {type(items).__name__}")
        return
    if len(items) > mspec.max_items:
        step.set(task, status=S.FAILED, finished_at=step.now,
                 error=f"map.over has {len(items)} items, over map.max_items={mspec.max_items}")
        return
    if not items:
        step.set(task, status=S.SUCCEEDED, output=[], instances=0, started_at=step.now, finished_at=step.now)
        return
    _expand(step, step.set(task, status=S.RUNNING, instances=len(items), started_at=step.now))


def _expand(step: _Step, parent: Task) -> None:
    """Create and queue the mapped task's next `config.expand_chunk` instances. If some remain,
    the parent's timer (due at once) makes the rest in later steps: the coordinator handles
    other events in between, so a large fan-out cannot hold it for long. Once a cancel is
    requested (even one whose event has not arrived yet), it makes no more: the parent ends
    when the instances made have."""
    run = step.run
    if run.cancel_requested:
        if parent.timer == TIMER_EXPAND:
            step.set(parent, timer=None, timer_at=None)
            step.to_settle.append(parent.name)
        return
    made, total = run.map_made.get(parent.name, 0), parent.instances or 0
    chunk = step.config.expand_chunk
    end = total if chunk <= 0 else min(total, made + chunk)
    for i in range(made, end):
        inst = Task(key=model.instance_key(parent.name, i), name=parent.name, map_index=i)
        run.put(inst)
        step.effects.append(TaskChanged(None, inst))
        _queue(step, inst)
    if end < total:
        step.set(parent, timer=TIMER_EXPAND, timer_at=step.now)
        step.effects.append(ArmTimer(parent.key, parent.attempt, TIMER_EXPAND, step.now))
    elif parent.timer == TIMER_EXPAND:
        step.set(parent, timer=None, timer_at=None)


def _collect(step: _Step, parent: Task) -> None:
    """All instances of a mapped task ended: the parent ends with their outputs, in order."""
    instances = step.run.instances(parent.name)
    failed = [t for t in instances if t.status in (S.FAILED, S.UPSTREAM_FAILED)]
    if failed:
        first = failed[0]
        error = f"{len(failed)} of {parent.instances} instances failed; first {first.key}: {first.error}"
        step.set(parent, status=S.FAILED, error=error, finished_at=step.now)
    elif len(instances) < (parent.instances or 0) or any(t.status == S.CANCELLED for t in instances):
        step.set(parent, status=S.CANCELLED, finished_at=step.now)
    else:
        step.set(parent, status=S.SUCCEEDED, output=[t.output for t in instances], finished_at=step.now)


def _queue(step: _Step, task: Task, **changes: Any) -> None:
    """Start the next attempt of `task`: resolve its arguments and hand it to the scheduler."""
    run = step.run
    tspec = run.dag.tasks[task.name]
    try:
        args = model.resolve_args(run, task)
    except refs.RefError as exc:
        step.set(task, status=S.FAILED, error=f"args: {exc}", timer=None, timer_at=None, finished_at=step.now)
        return
    attempt = task.attempt + 1
    queued = step.set(
        task, status=S.QUEUED, attempt=attempt, error=None, timer=None, timer_at=None,
        queued_at=step.now, started_at=None, finished_at=None, **changes,
    )
    step.effects.append(AttemptChanged(task.key, attempt, "queued", queued_at=step.now))
    step.effects.append(Enqueue(queued, run.dispatch_pool(task.name), tspec.fn, args, tspec.timeout_seconds))


def _set_run(step: _Step, status: RunStatus, error: str | None = None) -> None:
    before = step.run.status
    if before == status:
        return
    step.run.status = status
    step.run.error = error
    step.effects.append(RunChanged(before, status, error))


def _finish_run(step: _Step) -> None:
    run = step.run
    if run.open_tasks > 0 or run.status not in (RunStatus.PENDING, RunStatus.RUNNING):
        return
    if run.cancel_requested:
        _set_run(step, RunStatus.CANCELLED, "cancelled by request")
    elif run.failed_tasks:
        failed = next(t for t in run.tasks.values() if t.status in (S.FAILED, S.UPSTREAM_FAILED))
        _set_run(step, RunStatus.FAILED, f"task '{failed.key}' {failed.status}: {failed.error}")
    else:
        _set_run(step, RunStatus.SUCCEEDED)

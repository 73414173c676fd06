"""Run and task statuses, and which transitions between them are allowed (a data table)."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskStatus(StrEnum):
    PENDING = "pending"  # waiting for upstream tasks
    QUEUED = "queued"  # ready: waiting for a slot, or in its pool's stream
    RUNNING = "running"  # an agent started the current attempt
    RETRYING = "retrying"  # the last attempt failed; the next one waits for its backoff timer
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # `when` was false, or an upstream was skipped
    UPSTREAM_FAILED = "upstream_failed"
    CANCELLED = "cancelled"


RUN_TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
TASK_TERMINAL = frozenset(
    {
        TaskStatus.SUCCEEDED,
        TaskStatus.FAILED,
        TaskStatus.SKIPPED,
        TaskStatus.UPSTREAM_FAILED,
        TaskStatus.CANCELLED,
    }
)
TASK_ACTIVE = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})

S = TaskStatus
TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.PENDING: frozenset(
        {S.QUEUED, S.RUNNING, S.SUCCEEDED, S.FAILED, S.SKIPPED, S.UPSTREAM_FAILED, S.CANCELLED}
    ),
    # QUEUED again: an attempt lost to the platform (evicted, preempted) is replaced at once.
    S.QUEUED: frozenset({S.QUEUED, S.RUNNING, S.SUCCEEDED, S.FAILED, S.RETRYING, S.CANCELLED}),
    S.RUNNING: frozenset({S.QUEUED, S.SUCCEEDED, S.FAILED, S.RETRYING, S.CANCELLED}),
    S.RETRYING: frozenset({S.QUEUED, S.CANCELLED, S.FAILED}),
    # Terminal states leave only through an explicit run retry: a task goes back to PENDING
    # (its next attempt is a new one), a mapped parent back to RUNNING while failed instances
    # run again.
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset({S.PENDING, S.QUEUED, S.RUNNING}),
    S.SKIPPED: frozenset(),
    S.UPSTREAM_FAILED: frozenset({S.PENDING}),
    S.CANCELLED: frozenset({S.PENDING, S.QUEUED, S.RUNNING}),
}
# A mapped parent task goes PENDING -> RUNNING when it has created its instances, and ends
# when they have all ended; that is why PENDING may go straight to RUNNING or SUCCEEDED.

R = RunStatus
RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    R.PENDING: frozenset({R.RUNNING, R.SUCCEEDED, R.FAILED, R.CANCELLED}),
    R.RUNNING: frozenset({R.SUCCEEDED, R.FAILED, R.CANCELLED}),
    R.SUCCEEDED: frozenset(),
    R.FAILED: frozenset({R.RUNNING}),
    R.CANCELLED: frozenset({R.RUNNING}),
}


def task_transition_allowed(before: TaskStatus, after: TaskStatus) -> bool:
    return after in TASK_TRANSITIONS[before]


def run_transition_allowed(before: RunStatus, after: RunStatus) -> bool:
    return after in RUN_TRANSITIONS[before]

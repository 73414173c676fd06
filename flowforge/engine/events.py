"""What an entry of a partition's event stream means to the state machine: decoding the wire
envelope into a `machine` event, and what to apply instead when an event cannot be stored."""

from __future__ import annotations

from typing import Any

from flowforge import wire
from flowforge.domain import machine


def context(parsed: tuple[str, machine.Event] | None) -> dict[str, Any]:
    """The run, task and attempt an event is about, for a log line."""
    if parsed is None:
        return {"run": None}
    run_id, ev = parsed
    return {"run": run_id, "task": getattr(ev, "key", None), "attempt": getattr(ev, "attempt", None)}


def _generation(env: dict[str, Any]) -> int | None:
    n = env.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def decode(env: dict[str, Any]) -> tuple[str, machine.Event] | None:
    """The (run, state-machine event) an event-stream entry stands for; None if unreadable."""
    kind, run_id = env.get("k"), env.get("run")
    if not isinstance(run_id, str):
        return None
    try:
        match kind:
            case wire.RUN_CREATED:
                return run_id, machine.Start()
            case wire.RUN_CANCEL:
                return run_id, machine.Cancel(_generation(env))
            case wire.RUN_RETRY:
                return run_id, machine.Retry(_generation(env))
            case wire.ATTEMPT_STARTED:
                at = env.get("at")
                return run_id, machine.Started(
                    env["task"], int(env["attempt"]), env.get("agent"), at if isinstance(at, float) else None
                )
            case wire.ATTEMPT_FINISHED:
                return run_id, machine.Finished(
                    key=env["task"],
                    attempt=int(env["attempt"]),
                    ok=bool(env["ok"]),
                    output=env.get("output"),
                    error=env.get("error"),
                    reason=env.get("reason") or "error",
                    retryable=bool(env.get("retryable", True)),
                    started_at=_stamp(env.get("started_at")),
                    finished_at=_stamp(env.get("finished_at")),
                    agent=env.get("agent"),
                    logs=tuple(env.get("logs") or ()),
                )
    except (KeyError, TypeError, ValueError):
        return None
    return None


def substitute(parsed: tuple[str, machine.Event], error: str) -> tuple[str, machine.Event] | None:
    """What to apply instead of an event that cannot be stored: a result becomes a failure
    naming the problem (not retried: the same code would return the same result)."""
    run_id, ev = parsed
    if isinstance(ev, machine.Finished):
        return run_id, machine.Finished(
            key=ev.key, attempt=ev.attempt, ok=False, reason=wire.FAIL_REJECTED, retryable=False,
            error=f"the attempt's result could not be stored: {error[:2000]}",
            started_at=ev.started_at, finished_at=ev.finished_at, agent=ev.agent,
        )
    return None


def _stamp(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

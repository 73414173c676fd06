"""A run's output: a JSON page, or a live Server-Sent Events stream (stored lines first, then
the live tail) that a client resumes with Last-Event-ID and that ends when the run ends."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException

from flowforge import errors
from flowforge.api import auth, schemas, tickets
from flowforge.api.context import ApiContext
from flowforge.api.runs import RunId
from flowforge.domain import ids
from flowforge.domain.states import RUN_TERMINAL
from flowforge.logs.model import Filter
from flowforge.ports import Principal

router = APIRouter(prefix="/api/v1/runs", tags=["logs"])
HEARTBEAT_S = 15


def _raw_run_id(run_id: str = Path(..., max_length=64, description="The run's id (a UUID).")) -> str:
    return run_id


async def _reader(
    request: Request,
    run_id: str = Depends(_raw_run_id),
    ticket: str | None = Query(None, max_length=2048,
                               description="A ticket from POST .../logs/ticket, for clients that cannot send headers."),
    credentials: HTTPAuthorizationCredentials | None = Depends(auth.bearer),
) -> Principal:
    """The token's principal, or a valid ticket's for this run (a browser's EventSource cannot
    send headers); authentication comes before anything about the run is looked at."""
    if ticket is not None:
        ctx = auth.context(request)
        try:
            who = tickets.verify(ctx.ticket_key, ticket, str(uuid.UUID(run_id)))
        except (tickets.BadTicket, ValueError) as exc:
            raise HTTPException(401, str(exc) if isinstance(exc, tickets.BadTicket) else "the ticket is for another run",
                                headers={"WWW-Authenticate": "Bearer"}) from None
        if not await ctx.token_active(who.token_id):
            raise HTTPException(401, "the token this ticket was issued to is revoked or expired; "
                                "get a new ticket with a valid token", headers={"WWW-Authenticate": "Bearer"})
        request.state.tenant = who.tenant  # for the access log line
        return who
    who = await auth.principal(request, credentials)
    if not auth.allowed(who, "read"):
        raise HTTPException(403, f"a {who.role} token cannot do this")
    return who


def _run_id(run_id: str = Depends(_raw_run_id), _: Principal = Depends(_reader)) -> str:
    return ids.run_id(run_id)


async def _status(ctx: ApiContext, who: Principal, run_id: str) -> str:
    state = await ctx.catalog.run_state(run_id, who.tenant)
    if state is None or not who.sees(state[0]):
        raise errors.NotFound(f"run {run_id} not found")
    return state[1]


def _out(line) -> schemas.LogLineOut:  # type: ignore[no-untyped-def]
    return schemas.LogLineOut(pos=line.pos, task=line.task, attempt=line.attempt, stream=line.stream,
                              line=line.line, ts=datetime.fromtimestamp(line.ts, timezone.utc))


@router.post("/{run_id}/logs/ticket", response_model=schemas.LogTicket,
             summary="A short-lived ticket to follow the run's logs without an Authorization header")
async def log_ticket(
    run_id: str = RunId,
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.LogTicket:
    await _status(ctx, who, run_id)
    ticket = tickets.issue(ctx.ticket_key, who, run_id, ctx.ticket_ttl_s)
    return schemas.LogTicket(ticket=ticket, expires_in=ctx.ticket_ttl_s,
                             url=f"/api/v1/runs/{run_id}/logs?follow=true&ticket={ticket}")


@router.get(
    "/{run_id}/logs", response_model=schemas.LogPage,
    summary="A run's output lines: a page, or with follow=true a live text/event-stream",
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def run_logs(
    run_id: str = Depends(_run_id),
    task: str | None = Query(None, max_length=96, description="Only this task's lines (its key)."),
    attempt: int | None = Query(None, ge=1, le=1_000_000, description="Only this attempt's lines."),
    follow: bool = Query(False, description="Stream lines as they come, until the run ends (SSE)."),
    after: int = Query(0, ge=0, le=2**62, description="Only lines after this pos."),
    limit: int = Query(1000, ge=1, le=10_000, description="At most this many lines (without follow)."),
    last_event_id: str | None = Header(None, max_length=32,
                                       description="Resume a stream after this line (its pos)."),
    who: Principal = Depends(_reader),
    ctx: ApiContext = Depends(auth.context),
):  # type: ignore[no-untyped-def]
    """Stored lines first, then the live tail: every line once and in order. Each SSE event
    is `event: line` with the line's pos as its id; the stream ends with `event: end`
    carrying the run's status, and sends a comment every 15 s while quiet."""
    if last_event_id is not None:
        if not last_event_id.isdigit():
            raise errors.InvalidInput("header.last-event-id", "not a line position",
                                      "send the id of the last event received (a number)")
        after = max(after, int(last_event_id))
    status = await _status(ctx, who, run_id)
    if ctx.logs is None:
        raise errors.TemporaryError("the log store is not available")
    keep = Filter(task, attempt)
    if not follow:
        lines, cursor = await ctx.logs.page(who.tenant, run_id, after=after, limit=limit, keep=keep)
        return schemas.LogPage(items=[_out(x) for x in lines], next_after=cursor, run_status=status)

    last = {"status": status}

    async def ended() -> bool:
        last["status"] = await _status(ctx, who, run_id)
        return last["status"] in RUN_TERMINAL

    async def events() -> AsyncIterator[dict[str, str]]:
        async for line in ctx.logs.follow(who.tenant, run_id, after=after, keep=keep, ended=ended):
            yield {"id": str(line.pos), "event": "line", "data": _out(line).model_dump_json()}
        yield {"event": "end", "data": json.dumps({"run": run_id, "status": last["status"]})}

    return EventSourceResponse(events(), ping=HEARTBEAT_S, headers={"Cache-Control": "no-cache",
                                                                    "X-Accel-Buffering": "no"})

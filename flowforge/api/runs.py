"""Runs: start, list, read, cancel, retry."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Path, Query, Response

from flowforge import errors
from flowforge.api import auth, projects, quotas, schemas
from flowforge.api.context import ApiContext
from flowforge.domain import ids
from flowforge.ports import Principal

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])


def run_id_path(
    run_id: str = Path(..., max_length=64, description="The run's id (a UUID)."),
    _: Principal = Depends(auth.principal),  # authenticate first: a stranger learns nothing
) -> str:
    """The id in canonical form, so an uppercase or braced UUID names the same run."""
    return ids.run_id(run_id)


RunId = Depends(run_id_path)


async def _in_scope(ctx: ApiContext, who: Principal, run_id: str) -> None:
    """A run outside a project-scoped token's projects answers 404, as if absent (a run's project
    never changes, so checking before acting is enough)."""
    if who.projects is not None and not who.sees(await ctx.catalog.run_project(run_id, who.tenant) or ""):
        raise errors.NotFound(f"run {run_id} not found")


@router.post("", status_code=201, response_model=schemas.RunCreated, summary="Start a run")
async def create_run(
    body: schemas.RunCreate,
    response: Response,
    who: Principal = Depends(auth.permit("run")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.RunCreated:
    project = await projects.use(ctx, who, body.project, field="body.project", write=True)
    if body.dag is not None:
        done = await ctx.submitter.submit_inline(body.dag, body.params, tenant=who.tenant, project=project)
    else:
        assert body.name is not None
        done = await ctx.submitter.submit_template(body.name, body.version, body.params, tenant=who.tenant,
                                                   project=project)
    url = f"/api/v1/runs/{done.run_id}"
    response.headers["Location"] = url
    return schemas.RunCreated(id=done.run_id, project=project, dag=done.dag, version=done.version, url=url)


@router.get("", response_model=schemas.RunPage, summary="List runs, newest first")
async def list_runs(
    status: schemas.RunStatusName | None = Query(None),
    dag: str | None = Query(None, max_length=64, description="Only runs of this DAG name."),
    project: str | None = Query(None, pattern=schemas.ID_PATTERN, description="Only runs of this project."),
    created_after: datetime | None = Query(None, description="ISO 8601; inclusive."),
    created_before: datetime | None = Query(None, description="ISO 8601; exclusive."),
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, max_length=500),
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.RunPage:
    for field, value in (("created_after", created_after), ("created_before", created_before)):
        if value is not None and value.tzinfo is None:
            raise errors.InvalidInput(field, "a time without a zone", "add a UTC offset, e.g. 2026-01-31T12:00:00Z")
    if project is not None:
        await projects.use(ctx, who, project, field="query.project")
    items, nxt = await ctx.catalog.list_runs(
        who.tenant, limit=limit, cursor=cursor, status=status, dag=dag,
        created_after=created_after, created_before=created_before, project=project, projects=who.projects,
    )
    return schemas.RunPage(items=[schemas.RunListItem(**i) for i in items], next_cursor=nxt)


@router.get("/{run_id}", response_model=schemas.RunOut, summary="Read a run with its tasks and attempts")
async def get_run(
    run_id: str = RunId,
    logs: bool = Query(False, description="Include each attempt's captured output lines."),
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.RunOut:
    run = await ctx.catalog.get_run(run_id, who.tenant, logs=logs, projects=who.projects)
    if run is None:
        raise errors.NotFound(f"run {run_id} not found")
    await quotas.attach_waits(ctx, run, who.tenant)
    return schemas.RunOut(**run)


@router.post("/{run_id}/cancel", status_code=202, response_model=schemas.Accepted, summary="Cancel a run",
             responses={409: {"description": "The run already ended"}})
async def cancel_run(
    who: Principal = Depends(auth.permit("run")),
    run_id: str = RunId,
    ctx: ApiContext = Depends(auth.context),
) -> schemas.Accepted:
    """Queued tasks are cancelled at once; running ones are asked to stop and are marked
    cancelled when they do, or when the cancel grace runs out."""
    await _in_scope(ctx, who, run_id)
    await ctx.submitter.cancel(run_id, tenant=who.tenant)
    return schemas.Accepted(id=run_id, action="cancel", detail="cancelling")


@router.post("/{run_id}/retry", status_code=202, response_model=schemas.Accepted,
             summary="Re-run a failed or cancelled run's unfinished tasks",
             responses={409: {"description": "The run is not failed or cancelled"}})
async def retry_run(
    who: Principal = Depends(auth.permit("run")),
    run_id: str = RunId,
    ctx: ApiContext = Depends(auth.context),
) -> schemas.Accepted:
    """Failed, cancelled and upstream_failed tasks run again as new attempts, each with a fresh
    retry budget; succeeded and skipped tasks keep their results; history is kept."""
    await _in_scope(ctx, who, run_id)
    await ctx.submitter.retry(run_id, tenant=who.tenant)
    return schemas.Accepted(id=run_id, action="retry", detail="retrying")

"""Quotas through the API: a project's limits (narrowing its tenant's), the shape limits take
in and out, and why a queued task waits (`waiting_for` on a run's tasks)."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, Depends, Path

from flowforge import errors
from flowforge.api import auth, schemas
from flowforge.api.context import ApiContext
from flowforge.domain import model, quotas
from flowforge.ports import Principal

log = structlog.get_logger("flowforge.api")
router = APIRouter(prefix="/api/v1/tenants", tags=["tenants"])
TenantPath = Path(..., pattern=schemas.ID_PATTERN, description="The tenant's id.")
ProjectPath = Path(..., pattern=schemas.ID_PATTERN, description="The project's id.")


def shown(limits: dict[str, Any]) -> dict[str, Any]:
    """Limits as the API shows them: CPU and memory as quantities ("1500m", "32Gi")."""
    out = dict(limits)
    if out.get("max_cpu") is not None:
        out["max_cpu"] = quotas.format_cpu(out["max_cpu"])
    if out.get("max_memory") is not None:
        out["max_memory"] = quotas.format_memory(out["max_memory"], exact=True)
    return out


def stored(body: schemas.QuotasIn) -> dict[str, int | None]:
    """The quotas of a request body, in the engine's units (the validators converted them)."""
    return {name: getattr(body, name) for name in quotas.QUOTA_NAMES}


@router.get("/{tenant}/projects/{project}/limits", response_model=schemas.ProjectLimits,
            summary="A project's quotas (they narrow its tenant's)")
async def get_project_limits(
    tenant: str = TenantPath,
    project: str = ProjectPath,
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.ProjectLimits:
    auth.project_visible(who, tenant, project)
    return schemas.ProjectLimits(**shown(await ctx.catalog.project_limits(tenant, project)))


@router.put("/{tenant}/projects/{project}/limits", response_model=schemas.ProjectLimits,
            summary="Set a project's quotas",
            responses={403: {"description": "Needs the operator, or the tenant's tenant-admin (unscoped)"}})
async def put_project_limits(
    body: schemas.ProjectLimitsIn,
    tenant: str = TenantPath,
    project: str = ProjectPath,
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.ProjectLimits:
    """Replaces every limit of the project (omitted or null: none of its own; the tenant's
    still apply). A project only narrows its tenant's limits, so its tenant-admins may set
    them as well as the operator. Coordinators apply them within a second."""
    auth.administers(who, tenant, "project limits")
    return schemas.ProjectLimits(**shown(await ctx.catalog.set_project_limits(tenant, project, **stored(body))))


async def attach_waits(ctx: ApiContext, run: dict[str, Any], tenant: str) -> None:
    """Set `waiting_for` on the run's tasks that are queued, not yet dispatched, in a lane
    (pool, tenant, project) that a coordinator reported waiting for a quota. One Redis read
    per run; without Redis the run is shown without reasons."""
    if ctx.waits is None or run.get("status") not in ("pending", "running"):
        return
    project = run.get("project") or "default"
    lanes: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for task in run["tasks"]:
        if task["status"] != "queued":
            continue
        if any(a["number"] == task["attempt"] and a.get("dispatched_at") for a in task.get("attempts") or ()):
            continue  # handed to its pool: it waits for an agent, not for a quota
        pool = model.HEAVY_POOL if task["executor"] == "heavy" else task["pool"]
        lanes.setdefault((pool, tenant, project), []).append(task)
    if not lanes:
        return
    try:
        found = await ctx.waits.reasons(run["id"], list(lanes))
    except errors.TemporaryError as exc:
        log.warning("api.quota_waits_unavailable", error=str(exc))
        return
    for lane, why in found.items():
        for task in lanes[lane]:
            task["waiting_for"] = why

"""DAG templates: create, list, read, add a version, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Path, Query, Response

from flowforge import errors
from flowforge.api import auth, projects, schemas
from flowforge.api.context import ApiContext
from flowforge.domain import spec
from flowforge.ports import Principal

router = APIRouter(prefix="/api/v1/dags", tags=["dags"])
NamePath = Path(..., pattern=spec.NAME_PATTERN, max_length=64, description="The DAG's name.")
SpecBody = Body(..., description="A DAG spec (see the DAG spec reference in the README).")


async def _out(ctx: ApiContext, tenant: str, project: str, name: str, version: int | None = None,
               stored: bool | None = None) -> schemas.DagOut:
    found = await ctx.catalog.get_template(tenant, project, name, version)
    versions = [v["version"] for v in await ctx.catalog.template_versions(tenant, project, name)]
    return schemas.DagOut(name=found.name, version=found.version, created_at=found.created_at,
                          spec=found.spec, versions=versions, stored=stored)


@router.post("", status_code=201, response_model=schemas.DagOut, summary="Store a new DAG template")
async def create_dag(
    response: Response,
    dag: dict[str, Any] = SpecBody,
    project: str = projects.ProjectQuery,
    who: Principal = Depends(auth.permit("dags")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.DagOut:
    project = await projects.use(ctx, who, project, field="query.project", write=True)
    parsed, _ = ctx.submitter.validate(dag)
    stored = await ctx.catalog.put_version(who.tenant, project, parsed, template=True, create_only=True)
    response.headers["Location"] = f"/api/v1/dags/{stored.name}" + ("" if project == projects.DEFAULT
                                                                     else f"?project={project}")
    return await _out(ctx, who.tenant, project, stored.name, stored.version, stored.stored)


@router.get("", response_model=schemas.DagPage, summary="List DAG templates (latest versions)")
async def list_dags(
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, max_length=500),
    project: str = projects.ProjectQuery,
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.DagPage:
    project = await projects.use(ctx, who, project, field="query.project")
    rows, nxt = await ctx.catalog.list_templates(who.tenant, project, limit=limit, cursor=cursor)
    items = [
        schemas.DagListItem(
            name=r["name"], version=r["version"], versions=r["versions"], created_at=r["created_at"],
            description=r["spec"].get("description") or None, tasks=len(r["spec"].get("tasks") or ()),
        )
        for r in rows
    ]
    return schemas.DagPage(items=items, next_cursor=nxt)


@router.get("/{name}", response_model=schemas.DagOut, summary="Read a DAG template")
async def get_dag(
    name: str = NamePath,
    version: int | None = Query(None, ge=1, le=2**31 - 1, description="Unset: the latest version."),
    project: str = projects.ProjectQuery,
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.DagOut:
    project = await projects.use(ctx, who, project, field="query.project")
    return await _out(ctx, who.tenant, project, name, version)


@router.put("/{name}", response_model=schemas.DagOut, summary="Store a new version of a DAG template",
            responses={201: {"description": "Created: the first version", "model": schemas.DagOut}})
async def put_dag(
    response: Response,
    name: str = NamePath,
    dag: dict[str, Any] = SpecBody,
    project: str = projects.ProjectQuery,
    who: Principal = Depends(auth.permit("dags")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.DagOut:
    """Adds a version when the spec differs from the latest one (older versions stay readable
    and runnable); an identical spec returns the latest version unchanged."""
    if isinstance(dag, dict) and dag.get("name", name) != name:
        raise errors.InvalidInput("name", f"the body names '{dag.get('name')}' but the path names '{name}'",
                                  f"use the same name in both, or PUT to /api/v1/dags/{dag.get('name')}")
    project = await projects.use(ctx, who, project, field="query.project", write=True)
    parsed, _ = ctx.submitter.validate({**dag, "name": name} if isinstance(dag, dict) else dag)
    stored = await ctx.catalog.put_version(who.tenant, project, parsed, template=True)
    if stored.first:
        response.status_code = 201
    return await _out(ctx, who.tenant, project, stored.name, stored.version, stored.stored)


@router.delete("/{name}", status_code=204, summary="Delete a DAG template (every version)",
               responses={409: {"description": "Runs of it are still pending or running"}})
async def delete_dag(
    name: str = NamePath,
    project: str = projects.ProjectQuery,
    who: Principal = Depends(auth.permit("dags")),
    ctx: ApiContext = Depends(auth.context),
) -> Response:
    project = await projects.use(ctx, who, project, field="query.project", write=True)
    await ctx.catalog.delete_template(who.tenant, project, name)
    return Response(status_code=204)

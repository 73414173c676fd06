"""Projects: a tenant's runs and DAG templates are grouped in projects (`default` always exists).
Managed by the operator or the tenant's tenant-admins; a token may be scoped to some of them.
`use` checks the project a run or DAG request names."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query, Response
from starlette.exceptions import HTTPException

from flowforge import errors
from flowforge.api import auth, schemas
from flowforge.api.context import ApiContext
from flowforge.api.tenants import TenantPath
from flowforge.ports import Principal

DEFAULT = "default"
router = APIRouter(prefix="/api/v1/tenants", tags=["projects"])
ProjectPath = Path(..., pattern=schemas.ID_PATTERN, description="The project's id.")
ProjectQuery = Query(DEFAULT, pattern=schemas.ID_PATTERN, description="The project (default: `default`).")


def _scope(who: Principal) -> str:
    return ", ".join(sorted(who.projects or ()))


async def use(ctx: ApiContext, who: Principal, project: str, *, field: str, write: bool = False) -> str:
    """The project a request names, if the token may use it: outside a token's scope, a write
    answers 403 and a read 404 (as if absent); a project the tenant lacks answers 422 naming
    `field` (`body.project`, `query.project`)."""
    if not who.sees(project):
        if write:
            raise HTTPException(403, f"this token is scoped to project(s) {_scope(who)}; it cannot act in "
                                     f"project {project!r}")
        raise errors.NotFound(f"project {project!r} not found (this token sees project(s) {_scope(who)})")
    # `default` exists with its tenant and cannot be deleted: no lookup on the hot path.
    if project != DEFAULT and await ctx.catalog.missing_projects(who.tenant, [project]):
        raise errors.InvalidInput(
            field, f"tenant {who.tenant!r} has no project {project!r}",
            f"create it (POST /api/v1/tenants/{who.tenant}/projects, or flowforge projects create {project} "
            f"--tenant {who.tenant}), or name an existing project",
        )
    return project


async def _known(ctx: ApiContext, who: Principal, tenant: str) -> None:
    """The tenant is the token's own, or the operator names one that exists; else 404."""
    auth.tenant_visible(who, tenant)
    if tenant != who.tenant and not await ctx.catalog.tenant_exists(tenant):
        raise errors.NotFound(f"tenant {tenant!r} not found")


@router.post("/{tenant}/projects", status_code=201, response_model=schemas.ProjectOut, summary="Create a project",
             responses={403: {"description": "Needs tenant-admin (unscoped) or the operator"},
                        404: {"description": "No such tenant"}, 409: {"description": "The project exists"}})
async def create_project(
    body: schemas.ProjectIn,
    response: Response,
    tenant: str = TenantPath,
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.ProjectOut:
    auth.administers(who, tenant, "projects")
    made = await ctx.catalog.create_project(tenant, body.id, body.name)
    response.headers["Location"] = f"/api/v1/tenants/{tenant}/projects/{body.id}"
    return schemas.ProjectOut(**made)


@router.get("/{tenant}/projects", response_model=schemas.ProjectPage, summary="A tenant's projects, by id")
async def list_projects(
    tenant: str = TenantPath,
    limit: int = Query(100, ge=1, le=500),
    cursor: str | None = Query(None, max_length=500),
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.ProjectPage:
    """A token scoped to projects sees those only."""
    await _known(ctx, who, tenant)
    only = who.projects if tenant == who.tenant else None
    items, nxt = await ctx.catalog.list_projects(tenant, only=only, limit=limit, cursor=cursor)
    return schemas.ProjectPage(items=[schemas.ProjectOut(**p) for p in items], next_cursor=nxt)


@router.get("/{tenant}/projects/{project}", response_model=schemas.ProjectOut, summary="Read a project")
async def get_project(
    tenant: str = TenantPath,
    project: str = ProjectPath,
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.ProjectOut:
    auth.project_visible(who, tenant, project)
    return schemas.ProjectOut(**await ctx.catalog.get_project(tenant, project))


@router.delete("/{tenant}/projects/{project}", status_code=204,
               summary="Delete a project with its DAG templates and finished runs",
               responses={403: {"description": "Needs tenant-admin (unscoped) or the operator"},
                          409: {"description": "Runs of it are active, or it is the default project"}})
async def delete_project(
    tenant: str = TenantPath,
    project: str = ProjectPath,
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> Response:
    """Tokens scoped to it lose it; a token scoped to it alone is revoked."""
    auth.administers(who, tenant, "projects")
    await ctx.catalog.delete_project(tenant, project)
    return Response(status_code=204)

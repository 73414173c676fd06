"""Tenants: their limits (the quota of attempts in flight and the fair-share weight, set by the
operator) and their API tokens (managed by the operator or the tenant's own tenant-admins)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, Path, Response
from starlette.exceptions import HTTPException

from flowforge import errors
from flowforge.api import auth, schemas
from flowforge.api.context import ApiContext
from flowforge.ports import Principal

router = APIRouter(prefix="/api/v1/tenants", tags=["tenants"])
TenantPath = Path(..., pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="The tenant's id.")
@router.get("/{tenant}/limits", response_model=schemas.TenantLimits, summary="A tenant's quota and weight")
async def get_limits(
    tenant: str = TenantPath,
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.TenantLimits:
    if tenant != who.tenant and not auth.is_operator(who):
        raise errors.NotFound(f"tenant {tenant!r} not found")  # another tenant's: as if absent
    return schemas.TenantLimits(**await ctx.catalog.tenant_limits(tenant))


@router.put("/{tenant}/limits", response_model=schemas.TenantLimits, summary="Set a tenant's quota and weight",
            responses={403: {"description": "Needs the operator's admin token"}})
async def put_limits(
    body: schemas.TenantLimitsIn,
    tenant: str = TenantPath,
    who: Principal = Depends(auth.permit("operator")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.TenantLimits:
    """Coordinators apply the change to their next dispatch (within a second)."""
    return schemas.TenantLimits(**await ctx.catalog.set_tenant_limits(tenant, body.max_running_tasks, body.weight))


def _manages(who: Principal, tenant: str) -> None:
    """The operator manages every tenant; a tenant-admin its own; others see no such tenant."""
    if auth.is_operator(who):
        return
    if who.tenant != tenant:
        raise errors.NotFound(f"tenant {tenant!r} not found")
    if who.role != "tenant-admin":
        raise HTTPException(403, f"a {who.role} token cannot manage tokens; it needs tenant-admin or admin")


@router.post("/{tenant}/tokens", status_code=201, response_model=schemas.TokenCreated, summary="Create an API token")
async def create_token(
    body: schemas.TokenIn,
    tenant: str = TenantPath,
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.TokenCreated:
    """32 random bytes, shown once in this response; only its hash is stored. The operator may
    name a new tenant: it is created."""
    _manages(who, tenant)
    ttl = timedelta(seconds=body.expires_in_seconds) if body.expires_in_seconds else None
    made = await ctx.catalog.issue_token(tenant, body.name, body.role, ttl, create_tenant=auth.is_operator(who))
    return schemas.TokenCreated(**made)


@router.get("/{tenant}/tokens", response_model=schemas.TokenList, summary="A tenant's tokens (never the secrets)")
async def list_tokens(
    tenant: str = TenantPath,
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.TokenList:
    _manages(who, tenant)
    return schemas.TokenList(items=[schemas.TokenOut(**t) for t in await ctx.catalog.list_tokens(tenant)])


@router.delete("/{tenant}/tokens/{token_id}", status_code=204, summary="Revoke a token")
async def revoke_token(
    tenant: str = TenantPath,
    token_id: str = Path(..., max_length=64),
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> Response:
    """It stops working within `api.token_cache`."""
    _manages(who, tenant)
    await ctx.catalog.revoke_token_id(tenant, token_id)
    return Response(status_code=204)

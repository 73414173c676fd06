"""Tenants: their limits (the quota of attempts in flight and the fair-share weight, set by the
operator) and their API tokens (managed by the operator or the tenant's own tenant-admins)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, Path, Query, Response

from flowforge.api import auth, quotas, schemas
from flowforge.api.context import ApiContext
from flowforge.ports import Principal

router = APIRouter(prefix="/api/v1/tenants", tags=["tenants"])
TenantPath = Path(..., pattern=schemas.ID_PATTERN, description="The tenant's id.")


@router.post("", status_code=201, response_model=schemas.TenantOut, summary="Create a tenant",
             responses={403: {"description": "Needs the operator's admin token"},
                        409: {"description": "The tenant exists"}})
async def create_tenant(
    body: schemas.TenantIn,
    who: Principal = Depends(auth.permit("operator")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.TenantOut:
    """With its `default` project. Then give it a token: POST /api/v1/tenants/{id}/tokens."""
    made = await ctx.catalog.create_tenant(body.id, body.name)
    return schemas.TenantOut(**made)


@router.get("", response_model=schemas.TenantPage, summary="List tenants, by id",
            responses={403: {"description": "Needs the operator's admin token"}})
async def list_tenants(
    limit: int = Query(100, ge=1, le=500),
    cursor: str | None = Query(None, max_length=500),
    who: Principal = Depends(auth.permit("operator")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.TenantPage:
    items, nxt = await ctx.catalog.list_tenants(limit=limit, cursor=cursor)
    return schemas.TenantPage(items=[schemas.TenantOut(**t) for t in items], next_cursor=nxt)


@router.get("/{tenant}/limits", response_model=schemas.TenantLimits, summary="A tenant's quotas and weight")
async def get_limits(
    tenant: str = TenantPath,
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.TenantLimits:
    auth.tenant_visible(who, tenant)  # another tenant's: as if absent
    return schemas.TenantLimits(**quotas.shown(await ctx.catalog.tenant_limits(tenant)))


@router.put("/{tenant}/limits", response_model=schemas.TenantLimits, summary="Set a tenant's quotas and weight",
            responses={403: {"description": "Needs the operator's admin token"}})
async def put_limits(
    body: schemas.TenantLimitsIn,
    tenant: str = TenantPath,
    who: Principal = Depends(auth.permit("operator")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.TenantLimits:
    """Replaces every limit (omitted or null: none) and the weight. Coordinators apply the
    change to their next dispatch, and submissions see it, within a second."""
    limits = quotas.stored(body)
    return schemas.TenantLimits(**quotas.shown(await ctx.catalog.set_tenant_limits(
        tenant, limits.pop("max_running_tasks"), body.weight, **limits)))


def _manages(who: Principal, tenant: str) -> None:
    auth.administers(who, tenant, "tokens")


@router.post("/{tenant}/tokens", status_code=201, response_model=schemas.TokenCreated, summary="Create an API token")
async def create_token(
    body: schemas.TokenIn,
    tenant: str = TenantPath,
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.TokenCreated:
    """32 random bytes, shown once in this response; only its hash is stored. The operator may
    name a new tenant: it is created. `projects` scopes the token to those projects."""
    _manages(who, tenant)
    ttl = timedelta(seconds=body.expires_in_seconds) if body.expires_in_seconds else None
    made = await ctx.catalog.issue_token(tenant, body.name, body.role, ttl, body.projects,
                                         create_tenant=auth.is_operator(who), field="body.projects")
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
    """It stops working at once on this API process, within `api.token_cache` on the others;
    so do the log tickets issued to it."""
    _manages(who, tenant)
    await ctx.catalog.revoke_token_id(tenant, token_id)
    ctx.forget_token(token_id)
    return Response(status_code=204)

"""Tenant limits: the quota of attempts in flight and the fair-share weight (admin tokens set
them; a tenant's own tokens may read them)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path

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

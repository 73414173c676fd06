"""Bearer-token authentication: every /api/v1 route runs as the token's tenant."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from flowforge import errors
from flowforge.api.context import ApiContext
from flowforge.ports import OPERATOR_TENANT, Principal

_bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer ff_...`")
bearer = _bearer  # the scheme itself, for routes that also accept a log ticket
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def context(request: Request) -> ApiContext:
    return request.app.state.ctx


async def principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Principal:
    if credentials is None:
        raise HTTPException(401, "missing bearer token: send Authorization: Bearer <token>", headers=_CHALLENGE)
    token = credentials.credentials
    if len(token) > 200:
        raise HTTPException(401, "invalid or revoked token", headers=_CHALLENGE)
    ctx = context(request)
    found = await ctx.principal(token)
    if found is None:
        raise HTTPException(401, "invalid or revoked token", headers=_CHALLENGE)
    request.state.tenant = found.tenant  # for the access log line (flowforge.api.access)
    wait = ctx.spend(found.token_id)
    if wait > 0:
        raise HTTPException(429, f"over this token's rate limit ({ctx.rate_per_s:g} requests/s); retry shortly",
                            headers={"Retry-After": str(max(1, math.ceil(wait)))})
    return found



# What each role may do. `admin` (the operator's tenant only) adds cluster-wide powers;
# everything else stays within the token's own tenant.
ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset({"read", "run", "dags", "operator"}),
    "tenant-admin": frozenset({"read", "run", "dags"}),
    "member": frozenset({"read", "run"}),
    "viewer": frozenset({"read"}),
}
_NEEDS = {"read": "any role", "run": "member, tenant-admin or admin", "dags": "tenant-admin or admin",
          "operator": "an admin token of the operator's tenant"}


def is_operator(who: Principal) -> bool:
    """Cluster-wide powers (pools, tenant limits): an admin token of the operator's tenant."""
    return who.role == "admin" and who.tenant == OPERATOR_TENANT


def tenant_visible(who: Principal, tenant: str) -> None:
    """Another tenant answers 404, as if absent; the operator sees every tenant."""
    if tenant != who.tenant and not is_operator(who):
        raise errors.NotFound(f"tenant {tenant!r} not found")


def project_visible(who: Principal, tenant: str, project: str) -> None:
    """Another tenant's project, or one outside a scoped token's projects, answers 404."""
    tenant_visible(who, tenant)
    if tenant == who.tenant and not who.sees(project):
        raise errors.NotFound(f"project {project!r} not found")


def administers(who: Principal, tenant: str, what: str) -> None:
    """The operator manages every tenant's `what` (tokens, projects); a tenant-admin token
    without a project scope its own tenant's; another tenant answers 404, anyone else 403."""
    if is_operator(who):
        return
    tenant_visible(who, tenant)
    if who.role != "tenant-admin":
        raise HTTPException(403, f"a {who.role} token cannot manage {what}; it needs tenant-admin or admin")
    if who.projects is not None:
        raise HTTPException(403, f"a token scoped to project(s) {', '.join(sorted(who.projects))} cannot manage "
                                 f"{what}; use a tenant-admin token without a project scope")


def allowed(who: Principal, action: str) -> bool:
    if action == "operator":
        return is_operator(who)
    return action in ROLES.get(who.role, frozenset())


def permit(action: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the request's principal, if its role may do `action`; else 403."""

    async def check(who: Principal = Depends(principal)) -> Principal:
        if not allowed(who, action):
            raise HTTPException(403, f"a {who.role} token cannot do this; it needs {_NEEDS[action]}")
        return who

    return check

"""Bearer-token authentication: every /api/v1 route runs as the token's tenant."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from flowforge.api.context import ApiContext
from flowforge.ports import Principal

_bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer ff_...`")
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
    found = await context(request).principal(token)
    if found is None:
        raise HTTPException(401, "invalid or revoked token", headers=_CHALLENGE)
    return found


OPERATOR_TENANT = "default"  # the operator's tenant: `flowforge up` gives its admin token to it


def is_operator(who: Principal) -> bool:
    """Cluster-wide powers (pools, tenant limits): an admin token of the operator's tenant."""
    return who.role == "admin" and who.tenant == OPERATOR_TENANT

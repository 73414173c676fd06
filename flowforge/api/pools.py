"""Agent pools: what each pool has and wants, and node-group annotations that size them."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from starlette.exceptions import HTTPException

from flowforge.api import auth, schemas
from flowforge.api.context import ApiContext, Pools
from flowforge.ports import Principal

router = APIRouter(prefix="/api/v1/pools", tags=["pools"])


def _pools(ctx: ApiContext) -> Pools:
    if ctx.pools is None:
        raise HTTPException(503, "this API process has no view of the pools")
    return ctx.pools


@router.get("", response_model=schemas.PoolList, summary="Every pool: desired, ready and busy agents, backlog")
async def list_pools(
    who: Principal = Depends(auth.permit("read")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.PoolList:
    return schemas.PoolList(items=[schemas.PoolOut(**p) for p in await _pools(ctx).list()])


@router.post("/annotations", status_code=202, response_model=schemas.Annotated,
             summary="Set pools' agents per node on a node group",
             responses={403: {"description": "Needs an admin token"}, 404: {"description": "No such node group"}})
async def annotate(
    body: schemas.AnnotateIn,
    who: Principal = Depends(auth.permit("operator")),
    ctx: ApiContext = Depends(auth.context),
) -> schemas.Annotated:
    """Writes `flowforge.io/agent-pools` on every node of the group; the pool manager converges
    within seconds (watch `GET /api/v1/pools`)."""
    nodes = await _pools(ctx).annotate(body.node_group, dict(body.counts))
    return schemas.Annotated(node_group=body.node_group, nodes=nodes, counts=dict(body.counts), at=time.time())

"""The FastAPI application."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse

from flowforge.api import auth, dags, limits, pools, problems, runs, schemas, tenants
from flowforge.api.context import ApiContext

health = APIRouter(tags=["health"])


@health.get("/healthz", response_model=schemas.Health, summary="The process is alive")
async def healthz() -> schemas.Health:
    return schemas.Health(status="ok")


@health.get("/readyz", response_model=schemas.Health, summary="Postgres and Redis are reachable",
            responses={503: {"model": schemas.Health}})
async def readyz(ctx: ApiContext = Depends(auth.context)) -> JSONResponse:
    checks = await ctx.readiness()
    ok = all(v == "ok" for v in checks.values())
    body = schemas.Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def create_app(ctx: ApiContext, *, max_body_bytes: int = 2 << 20) -> FastAPI:
    app = FastAPI(
        title="FlowForge",
        version="1",
        description="DAG orchestration: light tasks on warm agents, heavy tasks in fresh Pods. "
        "Every /api/v1 route needs `Authorization: Bearer <token>`; errors are application/problem+json.",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.ctx = ctx
    problems.install(app)
    app.include_router(health)
    app.include_router(dags.router)
    app.include_router(runs.router)
    app.include_router(pools.router)
    app.include_router(tenants.router)
    app.add_middleware(limits.RequestGuard, max_bytes=max_body_bytes)
    return app

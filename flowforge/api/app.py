"""The FastAPI application."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse

from flowforge import metrics as metrics_mod
from flowforge.api import access, auth, dags, limits, logs, pools, problems, projects, quotas, runs, schemas, tenants
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


_UNAUTHORIZED = {"description": "No token, or an invalid, expired or revoked one (with `WWW-Authenticate: Bearer`)",
                 "content": {"application/problem+json": {"schema": {"type": "object"}}}}


def _document_auth(app: FastAPI) -> None:
    """Every operation that requires the bearer token (the requirement comes from the
    `auth.principal` dependency) answers 401 without a valid one: say so in /openapi.json."""
    generate = app.openapi

    def openapi() -> dict:
        doc = generate()  # built once, then cached by FastAPI: adding to it is idempotent
        for item in doc.get("paths", {}).values():
            for op in item.values():
                if isinstance(op, dict) and op.get("security"):
                    op.setdefault("responses", {}).setdefault("401", _UNAUTHORIZED)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(ctx: ApiContext, *, max_body_bytes: int = 2 << 20,
               metrics: metrics_mod.Metrics | None = None) -> FastAPI:
    app = FastAPI(
        title="FlowForge",
        version="1",
        description="DAG orchestration: light tasks on warm agents, heavy tasks in fresh Pods. "
        "Every /api/v1 route needs `Authorization: Bearer <token>`; errors are application/problem+json.",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.ctx = ctx
    app.state.metrics = metrics
    problems.install(app)
    app.include_router(health)
    app.include_router(access.router)
    app.include_router(dags.router)
    app.include_router(runs.router)
    app.include_router(logs.router)
    app.include_router(pools.router)
    app.include_router(tenants.router)
    app.include_router(projects.router)
    app.include_router(quotas.router)
    _document_auth(app)
    app.add_middleware(limits.RequestGuard, max_bytes=max_body_bytes)
    app.add_middleware(access.AccessLog, router=app.router, metrics=metrics)  # outermost: sees every answer
    return app

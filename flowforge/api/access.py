"""What every request leaves behind: one access log line and its count and latency, labelled by
the route template (`/api/v1/runs/{run_id}`, never the raw path) and status; and `GET /metrics`.

The access line holds the method, route template, status, duration and tenant (once the token
is verified): never the path's values, the query string (a log ticket rides in it) or a header.
Probes and scrapes (/healthz, /readyz, /metrics) are logged at debug level."""

from __future__ import annotations

import time
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from starlette.routing import Match, Router

from flowforge import metrics as metrics_mod

log = structlog.get_logger("flowforge.api")
QUIET = frozenset({"/healthz", "/readyz", "/metrics"})
UNMATCHED = "unmatched"

router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics (text format; no token)", response_class=Response,
            responses={200: {"content": {metrics_mod.CONTENT_TYPE: {"schema": {"type": "string"}}}}})
async def exposition(request: Request) -> Response:
    """Every metric of this process in Prometheus's text format. Public, like the probes: keep
    the port on a network only Prometheus reaches."""
    found: metrics_mod.Metrics | None = getattr(request.app.state, "metrics", None)
    if found is None:
        return Response("metrics are off\n", status_code=404, media_type="text/plain")
    return Response(await found.render(), media_type=metrics_mod.CONTENT_TYPE)


def exposition_app(metrics: metrics_mod.Metrics) -> Any:
    """A bare ASGI app serving only GET /metrics: the coordinator's, which has no API."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            status, body, kind = 200, await metrics.render(), metrics_mod.CONTENT_TYPE
        else:
            status, body, kind = 404, b"not found: the coordinator serves GET /metrics only\n", "text/plain"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return app


class AccessLog:
    """ASGI middleware, outermost: one log line and one observation per HTTP request."""

    def __init__(self, app: Any, router: Router, metrics: metrics_mod.Metrics | None = None) -> None:
        self.app = app
        self.router = router
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        state = scope.setdefault("state", {})  # the request's state: auth puts the tenant here
        status = 500  # unless a response starts: an exception the server turns into a 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - began
            route = self._template(scope)
            method = scope["method"]
            if self.metrics is not None:
                self.metrics.request(method, route, status, seconds)
            emit = log.debug if route in QUIET else log.info
            emit("api.request", method=method, route=route, status=status, duration_ms=round(seconds * 1000, 2),
                 tenant=state.get("tenant"))

    def _template(self, scope: dict[str, Any]) -> str:
        """The matched route's template. A request refused before routing (413, 422 of the
        request guard) is matched here; a path no route has is `unmatched`."""
        route = scope.get("route")
        if route is None:
            for candidate in self.router.routes:
                match, _ = candidate.matches(scope)
                if match is not Match.NONE:
                    route = candidate
                    break
        path = getattr(route, "path", None)
        return path if isinstance(path, str) and path else UNMATCHED

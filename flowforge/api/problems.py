"""Errors as `application/problem+json` (RFC 9457): one stable shape for every 4xx and 5xx,
with `errors[]` naming each failing field (`path`), what is wrong and how to fix it."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from flowforge import errors
from flowforge.domain import validation

log = structlog.get_logger("flowforge.api")
MEDIA_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
    405: "Method not allowed", 409: "Conflict", 413: "Request body too large",
    415: "Unsupported media type", 422: "Invalid input", 429: "Too many requests", 500: "Internal error",
    503: "Unavailable",
}


def problem(status: int, detail: str, *, problems: list[dict[str, str]] | None = None,
            headers: dict[str, str] | None = None, kind: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:flowforge:problem:{kind or _TITLES.get(status, 'error').lower().replace(' ', '-')}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if problems is not None:
        body["errors"] = problems
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def _loc_path(loc: tuple[Any, ...]) -> str:
    """('body', 'tasks', 0, 'fn') -> 'body.tasks[0].fn'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "$"


def _request_problems(exc: RequestValidationError) -> tuple[int, list[dict[str, str]]]:
    found, status = [], 422
    for err in exc.errors():
        kind = err.get("type", "")
        if kind == "json_invalid":
            status = 400
            found.append({"path": "body", "message": f"malformed JSON: {err.get('ctx', {}).get('error', err.get('msg'))}",
                          "hint": "send a JSON document with Content-Type: application/json"})
            continue
        path = _loc_path(tuple(err.get("loc", ())))
        found.append({"path": path, "message": str(err.get("msg", "invalid")), "hint": _hint(kind, err)})
    return status, found


def _hint(kind: str, err: dict[str, Any]) -> str:
    if kind == "missing":
        return "add this field"
    if kind == "extra_forbidden":
        return "remove this field; see /docs for the accepted fields"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"send a value of the expected type ({kind.removesuffix('_type').removesuffix('_parsing')})"
    if kind == "literal_error" and "expected" in err.get("ctx", {}):
        return f"use one of: {err['ctx']['expected']}"
    return "see /docs for what this field accepts"


def install(app: FastAPI) -> None:
    @app.exception_handler(validation.SpecError)
    async def _spec(_: Request, exc: validation.SpecError) -> JSONResponse:
        n = len(exc.problems)
        return problem(422, f"invalid DAG or params: {n} problem{'s' if n != 1 else ''}",
                       problems=[p.to_dict() for p in exc.problems], kind="invalid-dag")

    @app.exception_handler(errors.InvalidInput)
    async def _invalid(_: Request, exc: errors.InvalidInput) -> JSONResponse:
        return problem(422, str(exc), problems=[{"path": exc.field, "message": exc.message, "hint": exc.hint or ""}])

    @app.exception_handler(errors.NotFound)
    async def _not_found(_: Request, exc: errors.NotFound) -> JSONResponse:
        return problem(404, str(exc))

    @app.exception_handler(errors.Conflict)
    async def _conflict(_: Request, exc: errors.Conflict) -> JSONResponse:
        return problem(409, str(exc))

    @app.exception_handler(errors.QuotaExceeded)
    async def _quota(_: Request, exc: errors.QuotaExceeded) -> JSONResponse:
        return problem(429, str(exc), problems=[{"path": exc.field, "message": exc.message, "hint": exc.hint}],
                       headers={"Retry-After": str(max(1, round(exc.retry_after)))}, kind="quota-exceeded")

    @app.exception_handler(errors.TemporaryError)
    async def _unavailable(_: Request, exc: errors.TemporaryError) -> JSONResponse:
        log.warning("api.backend_unavailable", error=str(exc))
        return problem(503, "a backing service is unavailable; retry shortly",
                       headers={"Retry-After": str(max(1, round(exc.delay)))})

    @app.exception_handler(RequestValidationError)
    async def _request(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, found = _request_problems(exc)
        return problem(status, "the request is malformed" if status == 400 else "invalid request", problems=found)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("api.unhandled", path=request.url.path, error=repr(exc))
        return problem(500, "internal error; it has been logged")

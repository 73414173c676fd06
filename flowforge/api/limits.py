"""Request guards applied before the routes: a body size bound (413), and no NUL characters,
which Postgres text cannot hold (422 naming where)."""

from __future__ import annotations

import json
import re
from typing import Any

_DRAIN_LIMIT = 64 << 20  # bytes of an oversized body read and dropped before answering 413
# A JSON-escaped NUL (\u0000), not an escaped backslash followed by "u0000".
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

Scope = dict[str, Any]


class RequestGuard:
    """ASGI middleware: buffer at most `max_bytes` of a request body, refusing a larger one with
    413 without reading further; refuse NUL characters in the path, query or JSON body."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b""):
            await _problem(send, 422, "the URL contains a NUL character",
                           {"path": "query" if b"%00" in scope.get("query_string", b"") else "path",
                            "message": "contains a NUL character (%00)", "hint": "remove the NUL character"})
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                # Read (and drop) the rest first, up to a bound, so the client is not cut off
                # mid-send and sees the answer; past the bound the connection is closed.
                while message.get("more_body") and size <= _DRAIN_LIMIT:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    size += len(message.get("body", b""))
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if b"\\u0000" in body and _JSON_NUL.search(body):
            await _problem(send, 422, "the body contains a NUL character",
                           {"path": "body", "message": "a string contains a NUL character (\\u0000), which cannot be stored",
                            "hint": "remove it, or encode binary data (base64)"})
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any) -> None:
        await _problem(send, 413, f"the request body is over {self.max_bytes:,} bytes",
                       {"path": "body", "message": f"over {self.max_bytes:,} bytes",
                        "hint": "send a smaller body, or raise api.max_body_bytes"}, close=True)


async def _problem(send: Any, status: int, detail: str, error: dict[str, str], *, close: bool = False) -> None:
    title = "Request body too large" if status == 413 else "Invalid input"
    body = json.dumps({
        "type": f"urn:flowforge:problem:{title.lower().replace(' ', '-')}", "title": title,
        "status": status, "detail": detail, "errors": [error],
    }).encode()
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""Request guards applied before the routes: a body size bound (413); a body must be UTF-8
(400); no NUL characters or lone surrogates, which Postgres text cannot hold (422 naming where)."""

from __future__ import annotations

import json
import re
from typing import Any

_DRAIN_LIMIT = 64 << 20  # bytes of an oversized body read and dropped before answering 413
# Escapes that may decode to a string Postgres cannot store: NUL, or a UTF-16 surrogate.
_SUSPECT = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")

Scope = dict[str, Any]


class RequestGuard:
    """ASGI middleware: buffer at most `max_bytes` of a request body, refusing a larger one with
    413 without reading further; refuse a body that is not UTF-8, and NUL characters or lone
    surrogates in the path, query or JSON body."""

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
        refused = body_problem(body)
        if refused is not None:
            await _problem(send, *refused)
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


def body_problem(body: bytes) -> tuple[int, str, dict[str, str]] | None:
    """Why `body` is refused before any route sees it, or None."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return 400, "the body is not UTF-8", {
            "path": "body", "message": f"invalid UTF-8 at byte {exc.start}",
            "hint": "send the JSON document encoded as UTF-8",
        }
    if "\\u" not in text or not _SUSPECT.search(text):
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None  # malformed JSON: the route answers 400 with the parser's message
    found = _bad_string(doc)
    if found is None:
        return None
    path, message = found
    return 422, f"{path}: {message}", {
        "path": path, "message": message, "hint": "remove it, or encode binary data (base64)",
    }


def _bad_string(doc: Any) -> tuple[str, str] | None:
    """The path of the first string (value or key) holding NUL or a lone surrogate."""
    stack: list[tuple[str, Any]] = [("body", doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{key}"
                why = _unstorable(key)
                if why:
                    return child, f"the key {why}"
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str):
            why = _unstorable(value)
            if why:
                return path, f"the string {why}"
    return None


def _unstorable(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone UTF-16 surrogate (e.g. \\ud800), which is not valid Unicode"
    return None


async def _problem(send: Any, status: int, detail: str, error: dict[str, str], *, close: bool = False) -> None:
    title = {413: "Request body too large", 400: "Bad request"}.get(status, "Invalid input")
    body = json.dumps({
        "type": f"urn:flowforge:problem:{title.lower().replace(' ', '-')}", "title": title,
        "status": status, "detail": detail, "errors": [error],
    }).encode()
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

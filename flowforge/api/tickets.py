"""Short-lived signed tickets: how a browser's EventSource, which cannot send an
Authorization header, follows one run's logs without putting the API token in a URL.

A ticket names the principal, the one run it opens and its expiry, signed with HMAC-SHA256
under a key every API replica shares. It is not stored: it lives for seconds (`api.ticket_ttl`),
and the API checks on each use that the token it was issued to still works (so revoking the
token ends its tickets too, within `api.token_cache`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

from flowforge.ports import Principal


class BadTicket(Exception):
    """Unsigned, tampered with, expired, or for another run."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(key: bytes, who: Principal, run_id: str, ttl_s: float, now: float | None = None) -> str:
    body = {
        "t": who.tenant, "k": who.token_id, "r": who.role, "run": run_id,
        "p": None if who.projects is None else sorted(who.projects),
        "exp": round((time.time() if now is None else now) + ttl_s, 3),
    }
    payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    return payload + "." + _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())


def verify(key: bytes, ticket: str, run_id: str, now: float | None = None) -> Principal:
    """The principal a valid ticket for `run_id` stands for; BadTicket otherwise."""
    payload, dot, signature = ticket.partition(".")
    if not dot or len(ticket) > 2048:
        raise BadTicket("malformed ticket")
    want = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    try:
        given = _unb64(signature)
        body = json.loads(_unb64(payload)) if hmac.compare_digest(want, given) else None
    except (ValueError, UnicodeDecodeError):
        raise BadTicket("malformed ticket") from None
    if not isinstance(body, dict):
        raise BadTicket("invalid ticket signature")
    if body.get("run") != run_id:
        raise BadTicket("the ticket is for another run")
    if not isinstance(body.get("exp"), (int, float)) or body["exp"] < (time.time() if now is None else now):
        raise BadTicket("the ticket expired; get a new one")
    projects = body.get("p")
    return Principal(str(body["t"]), str(body["k"]), str(body["r"]),
                     None if projects is None else frozenset(map(str, projects)))

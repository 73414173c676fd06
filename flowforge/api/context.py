"""What the API needs, handed in by the composition root: no backend is imported here."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from flowforge.domain import spec
from flowforge.engine.submission import Submitter
from flowforge.ports import DagVersion, Principal


class Catalog(Protocol):
    async def verify_token(self, token: str) -> Principal | None: ...

    async def token_active(self, token_id: str) -> bool: ...

    async def tenant_limits(self, tenant: str) -> dict[str, Any]: ...

    async def set_tenant_limits(self, tenant: str, max_running_tasks: int | None, weight: float,
                                **quotas: int | None) -> dict[str, Any]: ...

    async def project_limits(self, tenant: str, project: str) -> dict[str, Any]: ...

    async def set_project_limits(self, tenant: str, project: str, **quotas: int | None) -> dict[str, Any]: ...

    async def issue_token(self, tenant: str, name: str, role: str | None = None,
                          expires_in: timedelta | None = None, projects: Sequence[str] | None = None, *,
                          create_tenant: bool = False, field: str = "projects") -> dict[str, Any]: ...

    async def list_tokens(self, tenant: str) -> list[dict[str, Any]]: ...

    async def revoke_token_id(self, tenant: str, token_id: str) -> None: ...

    async def put_version(self, tenant: str, project: str, dag: spec.DagSpec, *, template: bool,
                          create_only: bool = False) -> DagVersion: ...

    async def get_template(self, tenant: str, project: str, name: str, version: int | None = None) -> DagVersion: ...

    async def template_versions(self, tenant: str, project: str, name: str) -> list[dict[str, Any]]: ...

    async def list_templates(
        self, tenant: str, project: str, *, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]: ...

    async def delete_template(self, tenant: str, project: str, name: str) -> None: ...

    async def list_runs(
        self, tenant: str, *, limit: int, cursor: str | None = None, status: str | None = None,
        dag: str | None = None, created_after: datetime | None = None, created_before: datetime | None = None,
        project: str | None = None, projects: Collection[str] | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]: ...

    async def get_run(self, run_id: str, tenant: str, *, logs: bool = True,
                      projects: Collection[str] | None = None) -> dict[str, Any] | None: ...

    async def run_project(self, run_id: str, tenant: str) -> str | None: ...

    async def run_state(self, run_id: str, tenant: str) -> tuple[str, str] | None: ...

    # tenants and projects
    async def create_tenant(self, tenant: str, name: str | None = None) -> dict[str, Any]: ...

    async def list_tenants(self, *, limit: int, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]: ...

    async def tenant_exists(self, tenant: str) -> bool: ...

    async def create_project(self, tenant: str, project: str, name: str | None = None) -> dict[str, Any]: ...

    async def list_projects(self, tenant: str, *, only: Collection[str] | None = None, limit: int,
                            cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]: ...

    async def get_project(self, tenant: str, project: str) -> dict[str, Any]: ...

    async def missing_projects(self, tenant: str, projects: Collection[str]) -> list[str]: ...

    async def delete_project(self, tenant: str, project: str) -> None: ...


class QuotaWaits(Protocol):
    async def reasons(self, run_id: str, lanes: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
        """(pool, tenant, project) -> why the run's queued attempts in that lane wait."""
        ...


class LogReader(Protocol):
    """A run's output lines (flowforge.logs.tail.LogTail)."""

    async def page(self, tenant: str, run_id: str, *, after: int, limit: int, keep: Any) -> tuple[list[Any], int]: ...

    def follow(self, tenant: str, run_id: str, *, after: int, keep: Any,
               ended: Callable[[], Awaitable[bool]]) -> AsyncIterator[Any]: ...


class Pools(Protocol):
    async def list(self) -> list[dict[str, Any]]: ...

    async def annotate(self, group: str, counts: dict[str, int]) -> list[str]: ...


@dataclass
class ApiContext:
    catalog: Catalog
    submitter: Submitter
    # Checks each backing service; returns {"postgres": "ok" | error text, "redis": ...}.
    readiness: Callable[[], Awaitable[dict[str, str]]]
    pools: Pools | None = None
    token_cache_s: float = 10.0
    rate_per_s: float | None = None  # requests per second per token (None: unlimited)
    rate_burst: int = 100
    waits: QuotaWaits | None = None  # why queued tasks wait for a quota, as coordinators publish it
    logs: LogReader | None = None
    ticket_key: bytes = b""  # signs log-stream tickets; shared by every API replica
    ticket_ttl_s: float = 60.0
    _tokens: dict[str, tuple[Principal, float]] = field(default_factory=dict)
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # token id -> (tokens, at)
    _active: dict[str, tuple[bool, float]] = field(default_factory=dict)  # token id -> (active, until)

    def spend(self, token_id: str) -> float:
        """Take one request from the token's bucket; 0 if allowed, else seconds until one is."""
        if self.rate_per_s is None:
            return 0.0
        now = time.monotonic()
        left, at = self._buckets.get(token_id, (float(self.rate_burst), now))
        left = min(float(self.rate_burst), left + (now - at) * self.rate_per_s)
        if left < 1.0:
            self._buckets[token_id] = (left, now)
            return (1.0 - left) / self.rate_per_s
        if len(self._buckets) > 100_000:
            self._buckets.clear()
        self._buckets[token_id] = (left - 1.0, now)
        return 0.0

    async def principal(self, token: str) -> Principal | None:
        """The token's principal; verified tokens are remembered for `token_cache_s` (so a
        revocation takes effect within that time) to keep Postgres off every request."""
        now = time.monotonic()
        hit = self._tokens.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        found = await self.catalog.verify_token(token)
        if found is None:
            self._tokens.pop(token, None)
            return None
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        self._tokens[token] = (found, now + self.token_cache_s)
        return found

    async def token_active(self, token_id: str) -> bool:
        """Whether the token a ticket was issued to still works (remembered `token_cache_s`, like
        a verified token: a ticket stops working within that time of its token's revocation)."""
        now = time.monotonic()
        hit = self._active.get(token_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        active = await self.catalog.token_active(token_id)
        if len(self._active) > 10_000:
            self._active.clear()
        self._active[token_id] = (active, now + self.token_cache_s)
        return active

    def forget_token(self, token_id: str) -> None:
        """A token was revoked through this process: stop trusting it here at once."""
        self._active.pop(token_id, None)
        for token, (who, _) in list(self._tokens.items()):
            if who.token_id == token_id:
                del self._tokens[token]

"""Tenants' and projects' quotas as the operator sets them (the API's side; coordinators read
them through `PostgresStore.tenant_limits`, submission through `submission_limits`)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from flowforge import errors
from flowforge.backends.postgres import faults
from flowforge.domain.quotas import QUOTA_NAMES

_COLUMNS = ", ".join(QUOTA_NAMES)
_SETS = ", ".join(f"{name} = :{name}" for name in QUOTA_NAMES)


def _values(quotas: dict[str, int | None]) -> dict[str, int | None]:
    unknown = set(quotas) - set(QUOTA_NAMES)
    if unknown:
        raise TypeError(f"unknown quota {sorted(unknown)[0]!r}")
    return {name: quotas.get(name) for name in QUOTA_NAMES}


@faults.translated
class QuotaLimits:
    """Limits in the engine's units (millicores, bytes); None: no limit."""

    engine: AsyncEngine

    async def tenant_limits(self, tenant: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.text(f"SELECT weight, {_COLUMNS} FROM tenants WHERE id = :t"),
                                      {"t": tenant})).mappings().first()
        if row is None:
            raise errors.NotFound(f"tenant {tenant!r} not found")
        return {"tenant": tenant, **row}

    async def set_tenant_limits(self, tenant: str, max_running_tasks: int | None, weight: float,
                                **quotas: int | None) -> dict[str, Any]:
        """Replace a tenant's quotas (those not given: no limit) and fair-share weight;
        coordinators apply them within a second, submissions within a second too."""
        values = _values({"max_running_tasks": max_running_tasks, **quotas})
        await self._update(f"UPDATE tenants SET weight = :weight, {_SETS} WHERE id = :t",
                           {"t": tenant, "weight": weight, **values}, f"tenant {tenant!r} not found")
        return {"tenant": tenant, "weight": weight, **values}

    async def project_limits(self, tenant: str, project: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                sa.text(f"SELECT {_COLUMNS} FROM projects WHERE tenant_id = :t AND id = :p"),
                {"t": tenant, "p": project})).mappings().first()
        if row is None:
            raise errors.NotFound(f"project {project!r} not found in tenant {tenant!r}")
        return {"tenant": tenant, "project": project, **row}

    async def set_project_limits(self, tenant: str, project: str, **quotas: int | None) -> dict[str, Any]:
        """Replace a project's quotas (those not given: only the tenant's apply)."""
        values = _values(quotas)
        await self._update(f"UPDATE projects SET {_SETS} WHERE tenant_id = :t AND id = :p",
                           {"t": tenant, "p": project, **values},
                           f"project {project!r} not found in tenant {tenant!r}")
        return {"tenant": tenant, "project": project, **values}

    async def _update(self, sql: str, params: dict[str, Any], missing: str) -> None:
        """Run one UPDATE of a single row; NotFound(`missing`) when there is no such row."""
        async with self.engine.begin() as conn:
            found = await conn.execute(sa.text(sql), params)
        if not found.rowcount:
            raise errors.NotFound(missing)

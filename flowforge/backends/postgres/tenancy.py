"""Tenants and their projects as the operator and tenant-admins manage them. Every project query
is scoped to its tenant; a project is (tenant, id), never an id alone."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from flowforge import errors
from flowforge.backends.postgres import faults
from flowforge.backends.postgres.paging import decode_cursor, encode_cursor

DEFAULT_PROJECT = "default"  # every tenant has it; it cannot be deleted
ACTIVE = "('pending', 'running')"


def _page(rows: list[Any], limit: int) -> tuple[list[dict[str, Any]], str | None]:
    items = [dict(r) for r in rows[:limit]]
    return items, (encode_cursor(items[-1]["id"]) if len(rows) > limit else None)


def _after(cursor: str | None) -> str:
    return str(decode_cursor(cursor, 1)[0]) if cursor else ""


@faults.translated
class Tenancy:
    engine: AsyncEngine

    # ---- tenants -------------------------------------------------------------------------

    async def create_tenant(self, tenant: str, name: str | None = None) -> dict[str, Any]:
        """A new tenant with its `default` project; Conflict if the id is taken."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(
                sa.text("INSERT INTO tenants (id, name) VALUES (:t, :n) ON CONFLICT DO NOTHING "
                        "RETURNING id, name, created_at"), {"t": tenant, "n": name or tenant})).mappings().first()
            if row is None:
                raise errors.Conflict(f"tenant {tenant!r} exists")
            await conn.execute(sa.text("INSERT INTO projects (tenant_id, id, name) VALUES (:t, :p, :p)"),
                               {"t": tenant, "p": DEFAULT_PROJECT})
        return dict(row)

    async def list_tenants(self, *, limit: int, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Every tenant, by id, a page at a time."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                sa.text("SELECT id, name, created_at FROM tenants WHERE id > :after ORDER BY id LIMIT :limit"),
                {"after": _after(cursor), "limit": limit + 1})).mappings().all()
        return _page(list(rows), limit)

    async def tenant_exists(self, tenant: str) -> bool:
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.text("SELECT 1 FROM tenants WHERE id = :t"), {"t": tenant})).first() is not None

    # ---- projects ------------------------------------------------------------------------

    async def create_project(self, tenant: str, project: str, name: str | None = None) -> dict[str, Any]:
        """NotFound if the tenant does not exist; Conflict if it has this project already."""
        async with self.engine.begin() as conn:
            if (await conn.execute(sa.text("SELECT 1 FROM tenants WHERE id = :t FOR KEY SHARE"),
                                   {"t": tenant})).first() is None:
                raise errors.NotFound(f"tenant {tenant!r} not found")
            row = (await conn.execute(
                sa.text("INSERT INTO projects (tenant_id, id, name) VALUES (:t, :p, :n) ON CONFLICT DO NOTHING "
                        "RETURNING tenant_id AS tenant, id, name, created_at"),
                {"t": tenant, "p": project, "n": name or project})).mappings().first()
        if row is None:
            raise errors.Conflict(f"project {project!r} exists in tenant {tenant!r}")
        return dict(row)

    async def list_projects(self, tenant: str, *, only: Collection[str] | None = None, limit: int,
                            cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """The tenant's projects (only those of `only`, if given), by id, a page at a time."""
        q = ("SELECT tenant_id AS tenant, id, name, created_at FROM projects WHERE tenant_id = :t AND id > :after"
             + (" AND id = ANY(:only)" if only is not None else "") + " ORDER BY id LIMIT :limit")
        args: dict[str, Any] = {"t": tenant, "after": _after(cursor), "limit": limit + 1}
        if only is not None:
            args["only"] = sorted(only)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.text(q), args)).mappings().all()
        return _page(list(rows), limit)

    async def get_project(self, tenant: str, project: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                sa.text("SELECT tenant_id AS tenant, id, name, created_at, (SELECT count(*) FROM runs "
                        f"WHERE tenant_id = :t AND project_id = :p AND status IN {ACTIVE}) AS active_runs "
                        "FROM projects WHERE tenant_id = :t AND id = :p"),
                {"t": tenant, "p": project})).mappings().first()
        if row is None:
            raise errors.NotFound(f"project {project!r} not found")
        return dict(row)

    async def missing_projects(self, tenant: str, projects: Collection[str]) -> list[str]:
        """Those of `projects` the tenant does not have, in the order given."""
        async with self.engine.connect() as conn:
            found = set((await conn.execute(
                sa.text("SELECT id FROM projects WHERE tenant_id = :t AND id = ANY(:ps)"),
                {"t": tenant, "ps": list(projects)})).scalars())
        return [p for p in projects if p not in found]

    async def delete_project(self, tenant: str, project: str) -> None:
        """Delete a project with its DAG templates and finished runs. Refused (Conflict) for
        `default` and while runs of it are pending or running. Tokens scoped to it lose it; a
        token scoped to it alone is revoked (re-creating the id must not revive it)."""
        if project == DEFAULT_PROJECT:
            raise errors.Conflict("the default project cannot be deleted; every tenant keeps it")
        args = {"t": tenant, "p": project}
        async with self.engine.begin() as conn:
            if (await conn.execute(sa.text("SELECT 1 FROM projects WHERE tenant_id = :t AND id = :p FOR UPDATE"),
                                   args)).first() is None:
                raise errors.NotFound(f"project {project!r} not found")
            # Locking its DAG rows waits out submissions in flight (a new run holds a key-share
            # lock on its DAG row) and holds back new ones until this commits.
            await conn.execute(sa.text("SELECT 1 FROM dags WHERE tenant_id = :t AND project_id = :p FOR UPDATE"), args)
            active = (await conn.execute(sa.text(
                f"SELECT count(*) FROM runs WHERE tenant_id = :t AND project_id = :p AND status IN {ACTIVE}"),
                args)).scalar_one()
            if active:
                raise errors.Conflict(f"project {project!r} has {active} active run(s); cancel them or wait "
                                      "until they end, then delete")
            await conn.execute(sa.text("DELETE FROM runs WHERE tenant_id = :t AND project_id = :p"), args)
            await conn.execute(sa.text("DELETE FROM dags WHERE tenant_id = :t AND project_id = :p"), args)
            await conn.execute(sa.text(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) "
                "WHERE tenant_id = :t AND projects = ARRAY[CAST(:p AS varchar)]"), args)
            await conn.execute(sa.text(
                "UPDATE api_tokens SET projects = array_remove(projects, CAST(:p AS varchar)) "
                "WHERE tenant_id = :t AND :p = ANY(projects) AND cardinality(projects) > 1"), args)
            await conn.execute(sa.text("DELETE FROM projects WHERE tenant_id = :t AND id = :p"), args)

    async def run_project(self, run_id: str, tenant: str) -> str | None:
        """The project of the tenant's run; None if the tenant has no such run."""
        try:
            run_id = str(uuid.UUID(run_id))
        except ValueError:
            return None
        async with self.engine.connect() as conn:
            return (await conn.execute(
                sa.text("SELECT project_id FROM runs WHERE id = CAST(:id AS uuid) AND tenant_id = :t"),
                {"id": run_id, "t": tenant})).scalar_one_or_none()

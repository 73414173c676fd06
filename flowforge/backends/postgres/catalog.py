"""What the API reads and manages in Postgres, off the coordinator's hot path: tenants, API
tokens, DAG templates and their versions, and run listings. Every query is scoped to a tenant."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from flowforge import errors
from flowforge.backends.postgres import faults
from flowforge.backends.postgres.paging import decode_cursor, encode_cursor
from flowforge.backends.postgres.quotas import QuotaLimits
from flowforge.backends.postgres.tenancy import DEFAULT_PROJECT, Tenancy
from flowforge.ports import OPERATOR_TENANT, ROLES, DagVersion, Principal
from flowforge.domain import spec

TOKEN_PREFIX = "ff_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_RUN_COLUMNS = """
  r.id::text AS id, r.project_id AS project, r.dag_name, r.dag_version, d.template AS dag_template, r.status, r.params,
  r.error, r.cancel_requested, r.created_at, r.started_at, r.finished_at,
  d.spec -> 'secret_params' AS secret_params"""


def _conceal(run: dict[str, Any]) -> dict[str, Any]:
    """A run as the API shows it: secret params masked, and their values scrubbed from every
    string (outputs, errors, logs) a task may have echoed them into."""
    names = run.pop("secret_params", None) or []
    if not names:
        return run
    params = run.get("params") or {}
    secrets = spec.secret_values(names, params)
    run["params"] = {k: ("***" if k in names else v) for k, v in params.items()}
    return _scrub(run, secrets) if secrets else run


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and str(value) in secrets:
        return "***"
    return value


async def _ensure_tenant(conn: AsyncConnection, tenant: str, project: str) -> None:
    await conn.execute(sa.text("INSERT INTO tenants (id, name) VALUES (:t, :t) ON CONFLICT DO NOTHING"), {"t": tenant})
    await conn.execute(
        sa.text("INSERT INTO projects (tenant_id, id, name) VALUES (:t, :p, :p) ON CONFLICT DO NOTHING"),
        {"t": tenant, "p": project},
    )


@faults.translated
class Catalog(Tenancy, QuotaLimits):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # ---- tenants and tokens --------------------------------------------------------------

    async def ensure_tenant(self, tenant: str, project: str = "default") -> None:
        async with self.engine.begin() as conn:
            await _ensure_tenant(conn, tenant, project)

    async def create_token(self, tenant: str, name: str, role: str | None = None,
                           expires_in: timedelta | None = None, projects: Sequence[str] | None = None,
                           *, field: str = "projects") -> str:
        """Create a token for `tenant` (creating the tenant if new); return it (32 random bytes;
        only its hash is kept). Role: `admin` for the operator's tenant, else `tenant-admin`,
        unless given; `admin` exists in the operator's tenant only. `projects` scopes it to
        those projects of the tenant (None: every project); each must exist (else InvalidInput
        naming `field`)."""
        role = role or ("admin" if tenant == OPERATOR_TENANT else "tenant-admin")
        if role not in ROLES:
            raise errors.InvalidInput("role", f"unknown role {role!r}", f"use one of: {', '.join(ROLES)}")
        if role == "admin" and tenant != OPERATOR_TENANT:
            raise errors.InvalidInput("role", "admin tokens belong to the operator's tenant only",
                                      f"use tenant-admin for tenant {tenant!r}")
        scope = None if projects is None else sorted(set(projects))
        if scope == []:
            raise errors.InvalidInput(field, "an empty list scopes the token to nothing",
                                      "name at least one project, or leave it out for every project")
        if scope and role == "admin":
            raise errors.InvalidInput(field, "admin tokens act cluster-wide and cannot be scoped to projects",
                                      "scope a tenant-admin, member or viewer token instead")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self.engine.begin() as conn:
            await _ensure_tenant(conn, tenant, DEFAULT_PROJECT)
            if scope:
                # Key-share locks: deleting one of these projects waits for this token, then
                # takes the project out of its scope.
                found = set((await conn.execute(
                    sa.text("SELECT id FROM projects WHERE tenant_id = :t AND id = ANY(:ps) FOR KEY SHARE"),
                    {"t": tenant, "ps": scope})).scalars())
                if missing := [p for p in scope if p not in found]:
                    raise errors.InvalidInput(
                        field, f"tenant {tenant!r} has no project {missing[0]!r}",
                        f"create it first (flowforge projects create {missing[0]} --tenant {tenant}), "
                        "or name one of the tenant's projects")
            await conn.execute(
                sa.text("INSERT INTO api_tokens (id, tenant_id, name, token_hash, role, expires_at, projects) "
                        "VALUES (:id, :t, :n, :h, :r, now() + CAST(:ttl AS interval), :ps)"),
                {"id": str(uuid.uuid4()), "t": tenant, "n": name, "h": hash_token(token), "r": role,
                 "ttl": expires_in, "ps": scope},
            )
        return token

    async def issue_token(self, tenant: str, name: str, role: str | None = None,
                          expires_in: timedelta | None = None, projects: Sequence[str] | None = None, *,
                          create_tenant: bool = False, field: str = "projects") -> dict[str, Any]:
        """Like `create_token`; returns the token with its id and expiry. The tenant must exist
        unless `create_tenant`."""
        async with self.engine.connect() as conn:
            known = (await conn.execute(sa.text("SELECT 1 FROM tenants WHERE id = :t"), {"t": tenant})).first()
        if known is None and not create_tenant:
            raise errors.NotFound(f"tenant {tenant!r} not found")
        token = await self.create_token(tenant, name, role, expires_in, projects, field=field)
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                sa.text("SELECT id::text, role, created_at, expires_at, projects FROM api_tokens WHERE token_hash = :h"),
                {"h": hash_token(token)})).one()
        return {"id": row[0], "tenant": tenant, "name": name, "role": row[1], "created_at": row[2],
                "expires_at": row[3], "projects": row[4], "token": token}

    async def list_tokens(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's tokens (never the secrets themselves), newest first."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                sa.text("SELECT id::text AS id, name, role, projects, created_at, expires_at, revoked_at FROM api_tokens "
                        "WHERE tenant_id = :t ORDER BY created_at DESC LIMIT 1000"), {"t": tenant})).mappings().all()
        return [dict(r, tenant=tenant) for r in rows]

    async def revoke_token_id(self, tenant: str, token_id: str) -> None:
        try:
            token_id = str(uuid.UUID(token_id))
        except ValueError:
            raise errors.NotFound(f"token {token_id!r} not found") from None
        async with self.engine.begin() as conn:
            found = await conn.execute(
                sa.text("UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) "
                        "WHERE id = CAST(:id AS uuid) AND tenant_id = :t"), {"id": token_id, "t": tenant})
        if not found.rowcount:
            raise errors.NotFound(f"token {token_id!r} not found")

    async def verify_token(self, token: str) -> Principal | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.text("SELECT id::text, tenant_id, role, projects FROM api_tokens WHERE token_hash = :h "
                            "AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"),
                    {"h": hash_token(token)},
                )
            ).first()
        if row is None:
            return None
        return Principal(tenant=row[1], token_id=row[0], role=row[2],
                         projects=None if row[3] is None else frozenset(row[3]))

    async def token_active(self, token_id: str) -> bool:
        """Whether the token with this id is neither revoked nor expired."""
        try:
            uuid.UUID(token_id)
        except ValueError:
            return False  # no token has such an id
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                sa.text("SELECT 1 FROM api_tokens WHERE id = CAST(:id AS uuid) AND revoked_at IS NULL "
                        "AND (expires_at IS NULL OR expires_at > now())"), {"id": token_id})).first()
        return row is not None

    async def revoke_token(self, token: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.text("UPDATE api_tokens SET revoked_at = now() WHERE token_hash = :h AND revoked_at IS NULL"),
                {"h": hash_token(token)},
            )
        return bool(result.rowcount)

    # ---- DAG versions --------------------------------------------------------------------

    async def put_version(self, tenant: str, project: str, dag: spec.DagSpec, *, template: bool,
                          create_only: bool = False) -> DagVersion:
        """Store `dag` as the next version of its name (templates and inline specs are numbered
        apart), unless it equals the latest version of that kind, which is returned instead.
        With `create_only`, a name that has a live version is refused (409). Both the check and
        the insert run under one lock per name, so concurrent writers cannot both create."""
        doc = json.dumps(dag.model_dump(mode="json"))
        async with self.engine.begin() as conn:
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                               {"k": f"{tenant}/{project}/{dag.name}"})
            latest = (
                await conn.execute(
                    sa.text(
                        # jsonb equality: 1 and true differ, key order does not matter.
                        "SELECT id::text, version, spec, spec = CAST(:s AS jsonb) AS same, deleted, created_at "
                        "FROM dags WHERE tenant_id = :t AND project_id = :p AND name = :n AND template = :tpl "
                        "ORDER BY version DESC LIMIT 1"
                    ),
                    {"t": tenant, "p": project, "n": dag.name, "tpl": template, "s": doc},
                )
            ).mappings().first()
            live = latest is not None and not latest["deleted"]
            if live and create_only:
                raise errors.Conflict(
                    f"DAG '{dag.name}' exists; PUT /api/v1/dags/{dag.name}"
                    f"{'' if project == DEFAULT_PROJECT else '?project=' + project} stores a new version of it"
                )
            if live and latest["same"]:
                return DagVersion(latest["id"], dag.name, latest["version"], latest["spec"], latest["created_at"])
            dag_id, version = str(uuid.uuid4()), (latest["version"] + 1 if latest else 1)
            try:
                created = (
                    await conn.execute(
                        sa.text(
                            "INSERT INTO dags (id, tenant_id, project_id, name, version, spec, template) "
                            "VALUES (:id, :t, :p, :n, :v, CAST(:s AS jsonb), :tpl) RETURNING spec, created_at"
                        ),
                        {"id": dag_id, "t": tenant, "p": project, "n": dag.name, "v": version, "s": doc,
                         "tpl": template},
                    )
                ).one()
            except sa.exc.IntegrityError as exc:
                if faults.missing_reference(exc):  # the project is gone (or never was)
                    raise errors.NotFound(f"project {project!r} not found") from None
                raise
            return DagVersion(dag_id, dag.name, version, created[0], created[1], stored=True, first=not live)

    async def get_template(self, tenant: str, project: str, name: str, version: int | None = None) -> DagVersion:
        q = ("SELECT id::text, name, version, spec, created_at FROM dags WHERE tenant_id = :t AND project_id = :p "
             "AND name = :n AND template AND NOT deleted")
        args: dict[str, Any] = {"t": tenant, "p": project, "n": name}
        if version is not None:
            q += " AND version = :v"
            args["v"] = version
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.text(q + " ORDER BY version DESC LIMIT 1"), args)).first()
        if row is None:
            what = f"DAG '{name}'" + (f" version {version}" if version is not None else "")
            raise errors.NotFound(f"{what} not found")
        return DagVersion(*row)

    async def template_versions(self, tenant: str, project: str, name: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.text("SELECT version, created_at FROM dags WHERE tenant_id = :t AND project_id = :p "
                            "AND name = :n AND template AND NOT deleted ORDER BY version"),
                    {"t": tenant, "p": project, "n": name},
                )
            ).mappings().all()
        return [dict(r) for r in rows]

    async def list_templates(self, tenant: str, project: str, *, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """The latest version of each template, by name, a page at a time."""
        after = decode_cursor(cursor, 1)[0] if cursor else ""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT DISTINCT ON (name) name, version, spec, created_at, "
                        "  count(*) OVER (PARTITION BY name) AS versions "
                        "FROM dags WHERE tenant_id = :t AND project_id = :p AND template AND NOT deleted "
                        "AND name > :after ORDER BY name, version DESC LIMIT :limit"
                    ),
                    {"t": tenant, "p": project, "after": str(after), "limit": limit + 1},
                )
            ).mappings().all()
        items = [dict(r) for r in rows[:limit]]
        return items, (encode_cursor(items[-1]["name"]) if len(rows) > limit else None)

    async def delete_template(self, tenant: str, project: str, name: str) -> None:
        """Hide every version of a template. Refused while runs of it are pending or running;
        finished runs keep their history (they point at the stored spec)."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"{tenant}/{project}/{name}"})
            active = (
                await conn.execute(
                    sa.text(
                        "SELECT count(*) FROM runs r JOIN dags d ON d.id = r.dag_id WHERE r.tenant_id = :t "
                        "AND d.project_id = :p AND d.name = :n AND d.template AND r.status IN ('pending', 'running')"
                    ),
                    {"t": tenant, "p": project, "n": name},
                )
            ).scalar_one()
            if active:
                raise errors.Conflict(
                    f"DAG '{name}' has {active} active run(s); cancel them or wait until they end, then delete"
                )
            result = await conn.execute(
                sa.text("UPDATE dags SET deleted = true WHERE tenant_id = :t AND project_id = :p AND name = :n "
                        "AND template AND NOT deleted"),
                {"t": tenant, "p": project, "n": name},
            )
            if not result.rowcount:
                raise errors.NotFound(f"DAG '{name}' not found")

    # ---- runs ----------------------------------------------------------------------------

    async def list_runs(
        self,
        tenant: str,
        *,
        limit: int,
        cursor: str | None = None,
        status: str | None = None,
        dag: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        project: str | None = None,
        projects: Collection[str] | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Runs, newest first, with each run's task counts by status, a page at a time; of one
        `project`, and only of `projects` (a token's scope) if given."""
        where = ["r.tenant_id = :t"]
        args: dict[str, Any] = {"t": tenant, "limit": limit + 1}
        if project is not None:
            where.append("r.project_id = :p")
            args["p"] = project
        if projects is not None:
            where.append("r.project_id = ANY(:ps)")
            args["ps"] = sorted(projects)
        if status:
            where.append("r.status = :status")
            args["status"] = status
        if dag:
            where.append("r.dag_name = :dag")
            args["dag"] = dag
        if created_after:
            where.append("r.created_at >= :after")
            args["after"] = created_after
        if created_before:
            where.append("r.created_at < :before")
            args["before"] = created_before
        if cursor:
            at, run_id = decode_cursor(cursor, 2)
            try:
                args["c_at"], args["c_id"] = datetime.fromisoformat(str(at)), str(uuid.UUID(str(run_id)))
            except ValueError:
                raise errors.InvalidInput("cursor", "not a cursor this API returned",
                                          "pass next_cursor from the previous page") from None
            where.append("(r.created_at, r.id) < (:c_at, CAST(:c_id AS uuid))")
        q = f"""
SELECT {_RUN_COLUMNS},
  (SELECT jsonb_object_agg(s.status, s.n) FROM
     (SELECT status, count(*) AS n FROM tasks WHERE run_id = r.id GROUP BY status) s) AS task_counts
FROM runs r JOIN dags d ON d.id = r.dag_id
WHERE {' AND '.join(where)}
ORDER BY r.created_at DESC, r.id DESC LIMIT :limit"""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.text(q), args)).mappings().all()
        items = [_conceal(dict(r, task_counts=r["task_counts"] or {})) for r in rows[:limit]]
        nxt = encode_cursor(items[-1]["created_at"].isoformat(), items[-1]["id"]) if len(rows) > limit else None
        return items, nxt

    async def get_run(self, run_id: str, tenant: str, *, logs: bool = True,
                      projects: Collection[str] | None = None) -> dict[str, Any] | None:
        """A run with every task and every task's attempts; None if the tenant has no such run
        (or, with `projects`, none in those projects)."""
        try:
            run_id = str(uuid.UUID(run_id))
        except ValueError:
            return None
        async with self.engine.connect() as conn:
            run = (
                await conn.execute(
                    sa.text(f"SELECT {_RUN_COLUMNS} FROM runs r JOIN dags d ON d.id = r.dag_id "
                            "WHERE r.id = CAST(:id AS uuid) AND r.tenant_id = :t"),
                    {"id": run_id, "t": tenant},
                )
            ).mappings().first()
            if run is None or (projects is not None and run["project"] not in projects):
                return None
            tasks = (
                await conn.execute(
                    sa.text(
                        "SELECT key, name, map_index, instances, status, attempt, executor, route_reason, pool, output, "
                        "error, queued_at, started_at, finished_at FROM tasks WHERE run_id = CAST(:id AS uuid) "
                        "ORDER BY map_index NULLS FIRST, key"
                    ),
                    {"id": run_id},
                )
            ).mappings().all()
            attempts = (
                await conn.execute(
                    sa.text(
                        "SELECT task_key, number, status, pool, agent, reason, error, "
                        + ("logs, " if logs else "")
                        + "queued_at, dispatched_at, started_at, finished_at FROM attempts "
                        "WHERE run_id = CAST(:id AS uuid) ORDER BY task_key, number"
                    ),
                    {"id": run_id},
                )
            ).mappings().all()
        by_task: dict[str, list[dict[str, Any]]] = {}
        for a in attempts:
            row = dict(a)
            by_task.setdefault(row.pop("task_key"), []).append(row)
        out = dict(run)
        out["tasks"] = [dict(t, attempts=by_task.get(t["key"], [])) for t in tasks]
        return _conceal(out)

    async def run_state(self, run_id: str, tenant: str) -> tuple[str, str] | None:
        """The tenant's run's (project, status); None if the tenant has no such run."""
        try:
            run_id = str(uuid.UUID(run_id))
        except ValueError:
            return None
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                sa.text("SELECT project_id, status FROM runs WHERE id = CAST(:id AS uuid) AND tenant_id = :t"),
                {"id": run_id, "t": tenant})).first()
        return (row[0], row[1]) if row else None

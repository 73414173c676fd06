"""The Postgres run store. Hot-path writes are a handful of set-based statements per batch
(`jsonb_to_recordset`), each a compare-and-set on status and attempt number."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from flowforge import errors, ports
from flowforge.backends.postgres import faults, migrate
from flowforge.domain import model, routing, spec
from flowforge.domain.states import RunStatus, TaskStatus

_TASK_COLS = (
    "run_id uuid, key text, tenant_id text, name text, map_index int, before_status text, "
    "before_attempt int, status text, attempt int, retry_base int, infra_failures int, executor text, route_reason text, pool text, "
    "output jsonb, "
    "error text, timer text, timer_at float8, instances int, queued_at float8, started_at float8, "
    "finished_at float8"
)
_TASK_SET = """
  status = u.status, attempt = u.attempt, retry_base = u.retry_base, infra_failures = u.infra_failures, output = u.output, error = u.error, timer = u.timer,
  timer_at = to_timestamp(u.timer_at), instances = u.instances,
  queued_at = to_timestamp(u.queued_at), started_at = to_timestamp(u.started_at),
  finished_at = to_timestamp(u.finished_at)"""
_INSERT_TASKS_SQL = f"""
INSERT INTO tasks (run_id, key, tenant_id, name, map_index, status, attempt, retry_base, infra_failures, executor,
  route_reason, pool, output, error, timer, timer_at, instances, queued_at, started_at, finished_at)
SELECT u.run_id, u.key, u.tenant_id, u.name, u.map_index, u.status, u.attempt, u.retry_base, u.infra_failures,
  u.executor,
  u.route_reason, u.pool,
  u.output, u.error, u.timer, to_timestamp(u.timer_at), u.instances, to_timestamp(u.queued_at),
  to_timestamp(u.started_at), to_timestamp(u.finished_at)
FROM jsonb_to_recordset(CAST(:new_tasks AS jsonb)) AS u({_TASK_COLS})
ON CONFLICT (run_id, key) DO NOTHING
RETURNING run_id"""
_INSERT_TASKS = sa.text(_INSERT_TASKS_SQL)
# A new run, its tasks and the outbox event that announces it, as one statement.
_CREATE_RUN = sa.text(f"""
WITH
run AS (
  INSERT INTO runs (id, tenant_id, project_id, dag_id, dag_name, dag_version, partition, status, params)
  VALUES (:id, :t, :p, :d, :n, :v, :part, 'pending', CAST(:params AS jsonb)) RETURNING id
),
ins AS ({_INSERT_TASKS_SQL}),
ob AS (INSERT INTO outbox (tenant_id, partition, payload) VALUES (:t, :part, :payload) RETURNING id)
SELECT (SELECT id FROM ob) + 0 * (SELECT count(*) FROM run) + 0 * (SELECT count(*) FROM ins)
""")
# One cycle's writes as ONE statement (one round trip, atomic in autocommit): every task and
# run update is a compare-and-set; if any of them misses, the final division by zero aborts
# the whole statement, so nothing of the cycle is written. Sub-statements touch disjoint rows.
_APPLY = sa.text(f"""
WITH
upd AS (
  UPDATE tasks AS t SET {_TASK_SET}
  FROM jsonb_to_recordset(CAST(:tasks AS jsonb)) AS u({_TASK_COLS})
  WHERE t.run_id = u.run_id AND t.key = u.key AND t.status = u.before_status
    AND t.attempt = u.before_attempt
  RETURNING 1
),
ins AS ({_INSERT_TASKS_SQL}),
run AS (
  UPDATE runs AS r SET status = u.status, error = u.error, retries = u.retries,
    -- a cancel recorded by the API since we loaded the run survives until its event arrives
    cancel_requested = u.cancel_requested OR (r.cancel_requested AND u.before_status IN ('pending', 'running')
                                              AND u.status IN ('pending', 'running')),
    started_at = CASE WHEN u.status = 'running' THEN COALESCE(r.started_at, to_timestamp(u.at))
                      ELSE r.started_at END,
    finished_at = CASE WHEN u.status IN ('succeeded', 'failed', 'cancelled') THEN to_timestamp(u.at)
                       ELSE NULL END
  FROM jsonb_to_recordset(CAST(:runs AS jsonb)) AS u(run_id uuid, before_status text, status text,
    error text, cancel_requested bool, at float8, retries int)
  WHERE r.id = u.run_id AND r.status = u.before_status
  RETURNING 1
),
att AS (
  INSERT INTO attempts (run_id, task_key, number, tenant_id, status, pool, agent, reason, error,
    logs, queued_at, dispatched_at, started_at, finished_at)
  SELECT u.run_id, u.key, u.number, u.tenant, u.status, u.pool, u.agent, u.reason, u.error, u.logs,
    to_timestamp(u.queued_at), to_timestamp(u.dispatched_at), to_timestamp(u.started_at),
    to_timestamp(u.finished_at)
  FROM jsonb_to_recordset(CAST(:attempts AS jsonb)) AS u(run_id uuid, key text, number int,
    tenant text, status text, pool text, agent text, reason text, error text, logs jsonb,
    queued_at float8, dispatched_at float8, started_at float8, finished_at float8)
  ON CONFLICT (run_id, task_key, number) DO UPDATE SET
    status = EXCLUDED.status,
    pool = COALESCE(EXCLUDED.pool, attempts.pool),
    agent = COALESCE(EXCLUDED.agent, attempts.agent),
    reason = COALESCE(EXCLUDED.reason, attempts.reason),
    error = COALESCE(EXCLUDED.error, attempts.error),
    logs = COALESCE(EXCLUDED.logs, attempts.logs),
    queued_at = COALESCE(EXCLUDED.queued_at, attempts.queued_at),
    dispatched_at = COALESCE(EXCLUDED.dispatched_at, attempts.dispatched_at),
    started_at = COALESCE(EXCLUDED.started_at, attempts.started_at),
    finished_at = COALESCE(EXCLUDED.finished_at, attempts.finished_at)
  RETURNING 1
)
SELECT 1 / (((SELECT count(*) FROM upd) = :n_tasks AND (SELECT count(*) FROM ins) = :n_new
             AND (SELECT count(*) FROM run) = :n_runs)::int
            + 0 * (SELECT count(*) FROM att))
""")
_LOAD_RUNS = sa.text("""
SELECT r.id::text, r.tenant_id, r.dag_id::text, r.status, r.params, r.cancel_requested, r.error,
       r.partition, d.spec, r.retries, r.project_id
FROM runs r JOIN dags d ON d.id = r.dag_id WHERE r.id = ANY(CAST(:ids AS uuid[]))
""")
_LOAD_TASKS = sa.text("""
SELECT t.run_id::text, t.key, t.name, t.map_index, t.status, t.attempt, t.output, t.error, t.timer,
  extract(epoch FROM t.timer_at), t.instances, extract(epoch FROM t.queued_at),
  extract(epoch FROM t.started_at), extract(epoch FROM t.finished_at),
  extract(epoch FROM a.dispatched_at), t.retry_base, t.executor, t.infra_failures
FROM tasks t LEFT JOIN attempts a
  ON a.run_id = t.run_id AND a.task_key = t.key AND a.number = t.attempt
WHERE t.run_id = ANY(CAST(:ids AS uuid[]))
""")


# Quotas on what tenants and projects have in flight, as the coordinators enforce them.
_QUOTA_COLUMNS = ("max_running_tasks", "max_cpu", "max_memory", "max_gpu")
_TENANT_QUOTAS = sa.text(f"SELECT id, weight, {', '.join(_QUOTA_COLUMNS)} FROM tenants")
_PROJECT_QUOTAS = sa.text(
    f"SELECT tenant_id, id, {', '.join(_QUOTA_COLUMNS)} FROM projects "
    f"WHERE {' OR '.join(c + ' IS NOT NULL' for c in _QUOTA_COLUMNS)}"
)
# Submission quotas of a tenant and one of its projects.
_SUBMIT_LIMITS = sa.text("""
SELECT t.max_active_runs, t.max_dag_tasks, p.max_active_runs, p.max_dag_tasks
FROM tenants t LEFT JOIN projects p ON p.tenant_id = t.id AND p.id = :p WHERE t.id = :t
""")
_COUNT_ACTIVE = sa.text("""
SELECT count(*), count(*) FILTER (WHERE project_id = :p) FROM runs
WHERE tenant_id = :t AND status IN ('pending', 'running')
""")
# Serialises the active-run check and insert of one tenant's submissions (the count of a
# transaction that waited for the lock sees the runs the previous holder inserted).
_LOCK_ACTIVE_RUNS = sa.text("SELECT pg_advisory_xact_lock(20090, hashtext(:t))")
LIMITS_TTL_S = 1.0  # submission quotas are read at most this often per tenant and project
ACTIVE_RUNS_RETRY_S = 10.0  # Retry-After when a tenant or project is at max_active_runs


# The same statement in the driver's parameter style, for the raw psycopg connection.
_APPLY_DRIVER_SQL = re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", _APPLY.text)


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


def _dumps(rows: list[dict[str, Any]]) -> str:
    """The rows of a write as one JSON text (orjson: some 7 times faster than json here, a tenth
    of the coordinator's time; json for what orjson refuses, such as integers past 64 bits)."""
    try:
        return orjson.dumps(rows, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(rows, separators=(",", ":"), default=str)


def open_engine(url: str, pool_size: int) -> AsyncEngine:
    """An async engine on `url` whose statements are prepared on first use (the hot ones repeat)."""
    return create_async_engine(
        migrate.sync_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
        connect_args={"prepare_threshold": 1},
    )


@faults.translated
class PostgresStore:
    """Implements ports.RunStore, plus the submission and read queries the API needs."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        url = engine.url.set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._dags: dict[str, model.CompiledDag] = {}
        self._hot: Any = None
        self._submit_limits: dict[tuple[str, str], tuple[float, dict[str, dict[str, int | None]]]] = {}

    @classmethod
    def connect(cls, url: str, *, pool_size: int = 10) -> PostgresStore:
        return cls(open_engine(url, pool_size))

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def tenant_limits(self) -> ports.Quotas:
        """Every tenant's quotas on what it has in flight (those set), its projects' (those
        that set one) and its fair-share weight."""
        async with self.engine.connect() as conn:
            tenants = (await conn.execute(_TENANT_QUOTAS)).all()
            projects = (await conn.execute(_PROJECT_QUOTAS)).all()

        def quota(values: Sequence[Any]) -> dict[str, int]:
            return {name: int(v) for name, v in zip(_QUOTA_COLUMNS, values) if v is not None}

        return ports.Quotas(
            tenants={r[0]: q for r in tenants if (q := quota(r[2:]))},
            projects={(r[0], r[1]): q for r in projects if (q := quota(r[2:]))},
            weights={r[0]: float(r[1]) for r in tenants},
        )

    async def submission_limits(self, tenant: str, project: str) -> dict[str, dict[str, int | None]]:
        """{"tenant": {...}, "project": {...}}: max_active_runs and max_dag_tasks of the tenant
        and of the project (None: no limit); read at most every LIMITS_TTL_S per project."""
        now = time.monotonic()
        hit = self._submit_limits.get((tenant, project))
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self.engine.connect() as conn:
            row = (await conn.execute(_SUBMIT_LIMITS, {"t": tenant, "p": project})).first()
        values = tuple(row) if row is not None else (None, None, None, None)
        limits = {
            "tenant": {"max_active_runs": values[0], "max_dag_tasks": values[1]},
            "project": {"max_active_runs": values[2], "max_dag_tasks": values[3]},
        }
        if len(self._submit_limits) > 10_000:
            self._submit_limits.clear()
        self._submit_limits[(tenant, project)] = (now + LIMITS_TTL_S, limits)
        return limits

    async def _check_active_runs(self, conn: Any, tenant: str, project: str, tenant_max: int | None,
                                 project_max: int | None, adding: str) -> None:
        """Under the tenant's advisory lock (taken here, held to the end of the transaction):
        raise QuotaExceeded if the tenant or the project is at its max_active_runs."""
        await conn.execute(_LOCK_ACTIVE_RUNS, {"t": tenant})
        total, mine = (await conn.execute(_COUNT_ACTIVE, {"t": tenant, "p": project})).one()
        for who, limit, active, flag in (
            (f"tenant {tenant}", tenant_max, total, "--max-active-runs"),
            (f"project {tenant}/{project}", project_max, mine, None),
        ):
            if limit is not None and active >= limit:
                raise errors.QuotaExceeded(
                    "max_active_runs",
                    f"{who} has {active} active (pending or running) run{'s' if active != 1 else ''} and "
                    f"may have at most {limit}; {adding} would exceed it",
                    "retry after Retry-After seconds, when a run has ended; or cancel a run; or ask the "
                    "operator to raise max_active_runs"
                    + (f" (flowforge tenants limits {tenant} {flag} N)" if flag else ""),
                    retry_after=ACTIVE_RUNS_RETRY_S,
                )

    async def close(self) -> None:
        await self._drop_hot_connection()
        await self.engine.dispose()

    # ---- the coordinator's hot path ------------------------------------------------------

    async def apply(self, batch: ports.WriteBatch) -> set[str]:
        if not batch:
            return set()
        updates, inserts = [], []
        for w in batch.tasks.values():
            t = w.task
            row = {
                "run_id": w.run_id, "key": t.key, "tenant_id": w.tenant, "name": t.name,
                "map_index": t.map_index, "before_status": w.before, "before_attempt": w.before_attempt,
                "status": t.status, "attempt": t.attempt, "retry_base": t.retry_base,
                "infra_failures": t.infra_failures, "executor": w.executor, "pool": w.pool,
                "output": t.output, "error": t.error, "timer": t.timer, "timer_at": t.timer_at,
                "instances": t.instances, "queued_at": t.queued_at, "started_at": t.started_at,
                "finished_at": t.finished_at,
            }
            (inserts if w.before is None else updates).append(row)
        attempts = [
            {
                "run_id": a.run_id, "key": a.key, "number": a.number, "tenant": a.tenant,
                "status": a.status, "pool": a.pool, "agent": a.agent, "reason": a.reason,
                "error": a.error, "logs": a.logs, "queued_at": a.queued_at,
                "dispatched_at": a.dispatched_at, "started_at": a.started_at,
                "finished_at": a.finished_at,
            }
            for a in batch.attempts.values()
        ]
        runs = [
            {
                "run_id": r.run_id, "before_status": r.before, "status": r.after, "error": r.error,
                "cancel_requested": r.cancel_requested, "at": r.at, "retries": r.retries,
            }
            for r in batch.runs.values()
        ]
        params = {
            "tasks": _dumps(updates), "new_tasks": _dumps(inserts), "runs": _dumps(runs),
            "attempts": _dumps(attempts),
            "n_tasks": len(updates), "n_new": len(inserts), "n_runs": len(runs),
        }
        try:
            conn = await self._hot_connection()
            await conn.execute(_APPLY_DRIVER_SQL, params, prepare=True)
        except psycopg.errors.DivisionByZero:
            return await self._missed_runs(updates, inserts, runs)
        except faults.TRANSIENT as exc:
            await self._drop_hot_connection()
            raise faults.temporary(exc) from exc
        return set()

    async def _hot_connection(self) -> psycopg.AsyncConnection:
        """One autocommit psycopg connection kept for the coordinator's writes: no pool
        checkout, no BEGIN/COMMIT round trips (each write is one atomic statement), and no
        ORM layer on the one statement every task passes through."""
        if self._hot is None or self._hot.closed:
            # The planner takes jsonb_to_recordset for 100 rows and, on tables of up to some
            # 100k tasks, hash-joins them with a full scan; a cycle's rows are each found by
            # primary key, so this connection joins by index only (2.1 ms -> 0.16 ms at 10k tasks).
            # (A session setting, like the prepared statement: this connection is its own session.)
            hot = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
            await hot.execute("SET enable_hashjoin = off; SET enable_mergejoin = off")
            self._hot = hot
        return self._hot

    async def _drop_hot_connection(self) -> None:
        if self._hot is not None:
            try:
                await self._hot.close()
            except Exception:
                pass
            self._hot = None

    async def _missed_runs(self, updates: list[dict[str, Any]], inserts: list[dict[str, Any]],
                           runs: list[dict[str, Any]]) -> set[str]:
        """After an aborted write: which runs' rows were not where the batch expected them."""
        missed: set[str] = set()
        async with self.engine.connect() as conn:
            if updates or inserts:
                ids = sorted({str(r["run_id"]) for r in updates + inserts})
                rows = await conn.execute(
                    sa.text("SELECT run_id::text, key, status, attempt FROM tasks "
                            "WHERE run_id = ANY(CAST(:ids AS uuid[]))"), {"ids": ids})
                now = {(r[0], r[1]): (r[2], r[3]) for r in rows}
                for u in updates:
                    if now.get((u["run_id"], u["key"])) != (u["before_status"], u["before_attempt"]):
                        missed.add(u["run_id"])
                for i in inserts:
                    if (i["run_id"], i["key"]) in now:
                        missed.add(i["run_id"])
            if runs:
                rows = await conn.execute(
                    sa.text("SELECT id::text, status FROM runs WHERE id = ANY(CAST(:ids AS uuid[]))"),
                    {"ids": [r["run_id"] for r in runs]})
                now_runs = dict(rows.all())
                missed |= {r["run_id"] for r in runs if now_runs.get(r["run_id"]) != r["before_status"]}
        return missed or {str(r["run_id"]) for r in updates + inserts + runs}

    async def load_runs(self, run_ids: Sequence[str]) -> dict[str, ports.LoadedRun]:
        if not run_ids:
            return {}
        async with self.engine.connect() as conn:
            runs = (await conn.execute(_LOAD_RUNS, {"ids": list(run_ids)})).all()
            rows = (await conn.execute(_LOAD_TASKS, {"ids": list(run_ids)})).all()
        tasks: dict[str, list[tuple]] = {}
        for row in rows:
            tasks.setdefault(row[0], []).append(row)
        loaded = {}
        for run_id, tenant, dag_id, status, params, cancel, error, partition, dag_spec, retries, project in runs:
            compiled = self._dags.get(dag_id)
            if compiled is None:
                compiled = self._dags[dag_id] = model.compile_dag(spec.DagSpec.model_validate(dag_spec))
            restored, undispatched, dispatched_at, heavy = [], set(), {}, set()
            for r in tasks.get(run_id, ()):
                t = model.Task(
                    key=r[1], name=r[2], map_index=r[3], status=TaskStatus(r[4]), attempt=r[5],
                    output=r[6], error=r[7], timer=r[8], timer_at=_f(r[9]), instances=r[10],
                    queued_at=_f(r[11]), started_at=_f(r[12]), finished_at=_f(r[13]), retry_base=r[15],
                    infra_failures=r[17],
                )
                restored.append(t)
                if r[16] == "heavy":
                    heavy.add(t.name)
                if t.status in (TaskStatus.QUEUED, TaskStatus.RUNNING) and t.attempt:
                    if r[14] is None:
                        undispatched.add(t.key)
                    else:
                        dispatched_at[t.key] = float(r[14])
            run = model.Run.restore(
                run_id=run_id, tenant=tenant, dag=compiled, params=params, status=RunStatus(status),
                cancel_requested=cancel, tasks=restored, error=error, retries=retries, heavy=frozenset(heavy),
                project=project,
            )
            loaded[run_id] = ports.LoadedRun(run, partition, frozenset(undispatched), dispatched_at)
        return loaded

    async def active_runs(self, partitions: Sequence[int]) -> list[str]:
        q = sa.text(
            "SELECT id::text FROM runs WHERE status IN ('pending', 'running') "
            "AND partition = ANY(:parts) ORDER BY created_at"
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(q, {"parts": list(partitions)})).scalars())

    async def unpublished(self, partitions: Sequence[int], older_than_s: float, limit: int) -> list[ports.OutboxEntry]:
        q = sa.text(
            "SELECT id, partition, payload FROM outbox WHERE published_at IS NULL "
            "AND created_at < now() - make_interval(secs => :age) AND partition = ANY(:parts) "
            "ORDER BY id LIMIT :limit"
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q, {"age": older_than_s, "limit": limit, "parts": list(partitions)})).all()
        return [ports.OutboxEntry(r[0], r[1], bytes(r[2])) for r in rows]

    async def mark_published(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.text("UPDATE outbox SET published_at = now() WHERE id = ANY(:ids)"), {"ids": list(ids)}
            )

    async def purge_outbox(self, partitions: Sequence[int], older_than_s: float) -> int:
        """Delete events published more than `older_than_s` ago; return how many."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.text(
                    "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => :age) "
                    "AND partition = ANY(:parts)"
                ),
                {"age": older_than_s, "parts": list(partitions)},
            )
            return result.rowcount

    # ---- submission ----------------------------------------------------------------------

    async def create_run(
        self,
        *,
        run_id: str,
        tenant: str,
        project: str,
        dag_id: str,
        dag: spec.DagSpec,
        version: int,
        params: dict[str, Any],
        partition: int,
        event: bytes,
        routes: Mapping[str, routing.Route] | None = None,
        max_active_runs: tuple[int | None, int | None] = (None, None),
    ) -> int:
        """Insert the run, its tasks (with the router's decisions) and the outbox event in one
        transaction; return the outbox id. `max_active_runs`: the tenant's and the project's
        limit on pending and running runs; with either set, the count and the insert happen
        under a per-tenant lock, so concurrent submissions cannot overshoot it (QuotaExceeded)."""
        routes = routes or {}
        tasks = [
            {
                "run_id": run_id, "key": t.name, "tenant_id": tenant, "name": t.name, "map_index": None,
                "before_status": None, "before_attempt": 0, "status": "pending", "attempt": 0, "retry_base": 0,
                "infra_failures": 0, "executor": routes[t.name].executor if t.name in routes else t.executor,
                "route_reason": routes[t.name].reason if t.name in routes else None, "pool": t.pool, "output": None, "error": None, "timer": None,
                "timer_at": None, "instances": None, "queued_at": None, "started_at": None,
                "finished_at": None,
            }
            for t in dag.tasks
        ]
        args = {"id": run_id, "t": tenant, "p": project, "d": dag_id, "n": dag.name, "v": version,
                "part": partition, "params": json.dumps(params), "new_tasks": _dumps(tasks), "payload": event}
        if max_active_runs != (None, None):
            return await self._create_run_counted(args, tenant, project, max_active_runs)
        # One statement in autocommit: atomic, and one round trip instead of five.
        async with self.engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            try:
                return (await conn.execute(_CREATE_RUN, args)).scalar_one()
            except sa.exc.IntegrityError as exc:
                if faults.missing_reference(exc):  # its DAG version went with its deleted project
                    raise errors.NotFound(f"DAG version {dag_id} not found") from None
                raise

    async def _create_run_counted(self, args: dict[str, Any], tenant: str, project: str,
                                  max_active_runs: tuple[int | None, int | None]) -> int:
        """create_run under the tenant's lock, after counting its active runs."""
        try:
            async with self.engine.begin() as conn:
                await self._check_active_runs(conn, tenant, project, *max_active_runs, adding="this run")
                return (await conn.execute(_CREATE_RUN, args)).scalar_one()
        except sa.exc.IntegrityError as exc:
            if faults.missing_reference(exc):  # its DAG version went with its deleted project
                raise errors.NotFound(f"DAG version {args['d']} not found") from None
            raise

    async def add_event(self, tenant: str, partition: int, make_event: Callable[[int], bytes], *, run_id: str,
                        allowed: Sequence[str], cancel: bool = False, reactivate: bool = False) -> tuple[int, bytes]:
        """Record a run command (cancel, retry) in the outbox; return the outbox id and the event,
        `make_event(retries)`: built against the run's current retry count (its generation).

        Raises NotFound when the tenant has no such run, and Conflict when the run's status is
        not one of `allowed` (cancelling a finished run, retrying a running one). With
        `reactivate` (a retry makes an ended run active again), QuotaExceeded when the tenant or
        the run's project is at its max_active_runs."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.text("SELECT status, retries, project_id FROM runs WHERE id = CAST(:id AS uuid) "
                            "AND tenant_id = :t FOR UPDATE"),
                    {"id": run_id, "t": tenant},
                )
            ).first()
            status, retries, project = row if row is not None else (None, 0, None)
            if status is None:
                raise errors.NotFound(f"run {run_id} not found")
            if status not in allowed:
                raise errors.Conflict(f"run {run_id} is {status}; this needs a run that is {' or '.join(allowed)}")
            if reactivate:
                limits = await self.submission_limits(tenant, project)
                most = (limits["tenant"]["max_active_runs"], limits["project"]["max_active_runs"])
                if most != (None, None):
                    await self._check_active_runs(conn, tenant, project, *most, adding="retrying this run")
            if cancel:
                await conn.execute(
                    sa.text("UPDATE runs SET cancel_requested = true WHERE id = CAST(:id AS uuid)"), {"id": run_id}
                )
            event = make_event(retries)
            outbox_id = (
                await conn.execute(
                    sa.text("INSERT INTO outbox (tenant_id, partition, payload) VALUES (:t, :p, :e) RETURNING id"),
                    {"t": tenant, "p": partition, "e": event},
                )
            ).scalar_one()
            return outbox_id, event

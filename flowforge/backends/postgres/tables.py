"""SQLAlchemy table definitions. Every row carries its tenant; alembic migrations mirror these."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


def _now() -> sa.sql.elements.TextClause:
    return sa.text("now()")


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())
    max_running_tasks: Mapped[int | None] = mapped_column(sa.Integer)  # quota of attempts in flight
    weight: Mapped[float] = mapped_column(sa.Float, server_default="1")  # fair-share weight
    # Quotas (null: none). Resources are summed over running attempts: light ones count their
    # slot's share of the pool's agent, heavy ones their requests.
    max_cpu: Mapped[int | None] = mapped_column(sa.Integer)  # millicores
    max_memory: Mapped[int | None] = mapped_column(sa.BigInteger)  # bytes
    max_gpu: Mapped[int | None] = mapped_column(sa.Integer)
    max_active_runs: Mapped[int | None] = mapped_column(sa.Integer)  # pending or running runs
    max_dag_tasks: Mapped[int | None] = mapped_column(sa.Integer)  # tasks of one submitted DAG


class Project(Base):
    __tablename__ = "projects"
    tenant_id: Mapped[str] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())
    # Quotas narrowing the tenant's (null: only the tenant's apply); same units as Tenant's.
    max_running_tasks: Mapped[int | None] = mapped_column(sa.Integer)
    max_cpu: Mapped[int | None] = mapped_column(sa.Integer)
    max_memory: Mapped[int | None] = mapped_column(sa.BigInteger)
    max_gpu: Mapped[int | None] = mapped_column(sa.Integer)
    max_active_runs: Mapped[int | None] = mapped_column(sa.Integer)
    max_dag_tasks: Mapped[int | None] = mapped_column(sa.Integer)


class Dag(Base):
    """One version of a DAG. Versions are immutable; a new spec is a new version."""

    __tablename__ = "dags"
    id: Mapped[str] = mapped_column(UUID(as_uuid=False), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    project_id: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(64))
    version: Mapped[int] = mapped_column(sa.Integer)
    spec: Mapped[dict] = mapped_column(JSONB)
    deleted: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    # A template (stored through /dags, runnable by name) or the spec of an inline submission;
    # each kind numbers its versions on its own.
    template: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.true())
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())
    __table_args__ = (
        sa.ForeignKeyConstraint(["tenant_id", "project_id"], ["projects.tenant_id", "projects.id"]),
        sa.UniqueConstraint("tenant_id", "project_id", "name", "template", "version", name="dags_name_version"),
    )


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(UUID(as_uuid=False), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.String(64))
    project_id: Mapped[str] = mapped_column(sa.String(64))
    dag_id: Mapped[str] = mapped_column(sa.ForeignKey("dags.id"))
    dag_name: Mapped[str] = mapped_column(sa.String(64))
    dag_version: Mapped[int] = mapped_column(sa.Integer)
    partition: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(16))
    params: Mapped[dict] = mapped_column(JSONB)
    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    retries: Mapped[int] = mapped_column(sa.Integer, server_default="0")  # run retries applied
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    __table_args__ = (
        sa.Index("runs_tenant_created", "tenant_id", "created_at"),
        sa.Index("runs_tenant_dag_created", "tenant_id", "dag_name", "created_at"),
        sa.Index("runs_tenant_project_created", "tenant_id", "project_id", "created_at"),
        # The reconciler's sweep: active runs of a partition.
        sa.Index(
            "runs_active_partition", "partition",
            postgresql_where=sa.text("status IN ('pending', 'running')"),
        ),
        # Submission quotas: active runs of a tenant (and project).
        sa.Index(
            "runs_active_tenant_project", "tenant_id", "project_id",
            postgresql_where=sa.text("status IN ('pending', 'running')"),
        ),
    )


class Task(Base):
    """A task of a run. Rows are updated in place many times: fillfactor leaves room on each
    page so those updates stay HOT (no index churn)."""

    __tablename__ = "tasks"
    __table_args__ = {"postgresql_with": {"fillfactor": 70}}
    run_id: Mapped[str] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(96), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(64))
    map_index: Mapped[int | None] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(16))
    attempt: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    retry_base: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    infra_failures: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    executor: Mapped[str] = mapped_column(sa.String(8))
    route_reason: Mapped[str | None] = mapped_column(sa.Text)  # why the router chose the executor
    pool: Mapped[str] = mapped_column(sa.String(64))
    output: Mapped[object | None] = mapped_column(JSONB(none_as_null=True))
    error: Mapped[str | None] = mapped_column(sa.Text)
    timer: Mapped[str | None] = mapped_column(sa.String(16))
    timer_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    instances: Mapped[int | None] = mapped_column(sa.Integer)
    queued_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = {"postgresql_with": {"fillfactor": 70}}
    run_id: Mapped[str] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    task_key: Mapped[str] = mapped_column(sa.String(96), primary_key=True)
    number: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16))
    pool: Mapped[str | None] = mapped_column(sa.String(64))
    agent: Mapped[str | None] = mapped_column(sa.String(128))
    reason: Mapped[str | None] = mapped_column(sa.String(16))
    error: Mapped[str | None] = mapped_column(sa.Text)
    logs: Mapped[list | None] = mapped_column(JSONB)
    queued_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    dispatched_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class Outbox(Base):
    """Events written in the same transaction as the change they announce; published to Redis
    right after commit, and again by the reconciler if that publish was lost."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.String(64))
    partition: Mapped[int] = mapped_column(sa.Integer)
    payload: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())
    published_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    __table_args__ = (
        sa.Index("outbox_unpublished", "created_at", postgresql_where=sa.text("published_at IS NULL")),
    )


class ApiToken(Base):
    """A bearer token of the REST API. Only its SHA-256 is stored: tokens are 256-bit random
    strings, so a fast hash is enough, and a leaked table grants nothing."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(UUID(as_uuid=False), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(200))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    role: Mapped[str] = mapped_column(sa.String(16), server_default="admin")
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=_now())
    revoked_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # The projects the token may see and act on; null: every project of its tenant.
    projects: Mapped[list[str] | None] = mapped_column(ARRAY(sa.String(64)))


class LogLine(Base):
    """A captured line of task output (flowforge.logs.postgres), kept `logging.retention_days`.
    No foreign key to runs: lines are written in bulk apart from the run's transactions, and
    go by age alone."""

    __tablename__ = "log_lines"
    run_id: Mapped[str] = mapped_column(UUID(as_uuid=False), primary_key=True)
    pos: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)  # the line's place in its run
    tenant_id: Mapped[str] = mapped_column(sa.String(64))
    task_key: Mapped[str] = mapped_column(sa.String(96))
    attempt: Mapped[int] = mapped_column(sa.Integer)
    ts: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    stream: Mapped[str] = mapped_column(sa.String(8))
    line: Mapped[str] = mapped_column(sa.Text)
    __table_args__ = (sa.Index("log_lines_ts", "ts", postgresql_using="brin"),)

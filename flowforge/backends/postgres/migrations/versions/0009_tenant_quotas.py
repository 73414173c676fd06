"""Resource and submission quotas per tenant, optionally narrowed per project

tenants gain max_cpu (millicores), max_memory (bytes), max_gpu, max_active_runs and
max_dag_tasks (null: no limit). projects gain the same five plus max_running_tasks: a project's
limit narrows its tenant's (a project may exceed neither). An index of active runs per tenant and
project keeps the submission-time count of active runs cheap.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _quota_columns() -> list[sa.Column]:
    return [
        sa.Column("max_cpu", sa.Integer(), nullable=True),  # millicores of running attempts
        sa.Column("max_memory", sa.BigInteger(), nullable=True),  # bytes of running attempts
        sa.Column("max_gpu", sa.Integer(), nullable=True),  # GPUs of running attempts
        sa.Column("max_active_runs", sa.Integer(), nullable=True),  # pending or running runs
        sa.Column("max_dag_tasks", sa.Integer(), nullable=True),  # tasks of one submitted DAG
    ]


def upgrade() -> None:
    for column in _quota_columns():
        op.add_column("tenants", column)
    op.add_column("projects", sa.Column("max_running_tasks", sa.Integer(), nullable=True))
    for column in _quota_columns():
        op.add_column("projects", column)
    op.create_index(
        "runs_active_tenant_project", "runs", ["tenant_id", "project_id"],
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )


def downgrade() -> None:
    op.drop_index("runs_active_tenant_project", table_name="runs")
    for name in ("max_dag_tasks", "max_active_runs", "max_gpu", "max_memory", "max_cpu"):
        op.drop_column("projects", name)
        op.drop_column("tenants", name)
    op.drop_column("projects", "max_running_tasks")

"""api_tokens; templates apart from inline DAGs; an index for listing a DAG's runs

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), server_default="admin", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("runs_tenant_dag_created", "runs", ["tenant_id", "dag_name", "created_at"])
    op.add_column("dags", sa.Column("template", sa.Boolean(), server_default=sa.true(), nullable=False))
    op.drop_constraint("dags_tenant_id_project_id_name_version_key", "dags", type_="unique")
    op.create_unique_constraint(
        "dags_name_version", "dags", ["tenant_id", "project_id", "name", "template", "version"]
    )


def downgrade() -> None:
    op.drop_constraint("dags_name_version", "dags", type_="unique")
    op.create_unique_constraint(
        "dags_tenant_id_project_id_name_version_key", "dags", ["tenant_id", "project_id", "name", "version"]
    )
    op.drop_column("dags", "template")
    op.drop_index("runs_tenant_dag_created", table_name="runs")
    op.drop_table("api_tokens")

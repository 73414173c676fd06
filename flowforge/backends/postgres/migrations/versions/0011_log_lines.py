"""log_lines: captured task output kept by the Postgres LogStore (flowforge.logs.postgres)

One row per line, keyed by (run_id, pos): a re-sent batch inserts nothing twice. A BRIN index
on ts serves the retention worker's deletes; lines arrive in time order, so it stays tiny.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_lines",
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("pos", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("task_key", sa.String(96), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stream", sa.String(8), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "pos"),
    )
    op.create_index("log_lines_ts", "log_lines", ["ts"], postgresql_using="brin")


def downgrade() -> None:
    op.drop_index("log_lines_ts", table_name="log_lines")
    op.drop_table("log_lines")

"""tasks.infra_failures: attempts lost to the platform (eviction, preemption, node loss)

They are retried without spending the task's own retry budget, up to their own limit.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("infra_failures", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    op.drop_column("tasks", "infra_failures")

"""tasks.route_reason: why the router sent a task to a warm agent or to a fresh Pod

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("route_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("tasks", "route_reason")

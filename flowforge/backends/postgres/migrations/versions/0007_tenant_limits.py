"""tenants.max_running_tasks and tenants.weight: a tenant's quota of attempts in flight, and its
fair-share weight

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("max_running_tasks", sa.Integer(), nullable=True))
    op.add_column("tenants", sa.Column("weight", sa.Float(), server_default="1", nullable=False))


def downgrade() -> None:
    op.drop_column("tenants", "weight")
    op.drop_column("tenants", "max_running_tasks")

"""tasks.retry_base: attempts made before the current retry budget

A run retry gives failed tasks a fresh retry budget; the attempt number keeps counting so the
history stays whole, and this column remembers where the budget began.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("retry_base", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    op.drop_column("tasks", "retry_base")

"""runs.retries: how many run retries the coordinator has applied

Cancel and retry events carry the retry count they were asked against, so an event relayed
twice (the outbox is at-least-once) cannot cancel or retry a later generation of the run.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("retries", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    op.drop_column("runs", "retries")

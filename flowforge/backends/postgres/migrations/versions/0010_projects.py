"""Projects as a managed scope: api_tokens.projects narrows a token to some of its tenant's
projects (null: every project), and runs are listed per project by an index.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_tokens", sa.Column("projects", postgresql.ARRAY(sa.String(64)), nullable=True))
    op.create_index("runs_tenant_project_created", "runs", ["tenant_id", "project_id", "created_at"])


def downgrade() -> None:
    op.drop_index("runs_tenant_project_created", table_name="runs")
    op.drop_column("api_tokens", "projects")

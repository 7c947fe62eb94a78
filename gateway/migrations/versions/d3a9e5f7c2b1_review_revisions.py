"""review before approval: each plan's revisions, its revision number, an open request for
changes, and an index for the collection watch's look at recent changes

Revision ID: d3a9e5f7c2b1
Revises: c8d4f2a6b1e3
Create Date: 2026-12-04 00:30:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "d3a9e5f7c2b1"
down_revision: str | Sequence[str] | None = "c8d4f2a6b1e3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema. Existing workflows are at revision 1, recorded from their row."""
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("changes_requested_json", sa.Text(), nullable=True))
        batch_op.create_index("ix_workflows_updated", ["updated_at"], unique=False)
    op.create_table(
        "workflow_revisions",
        sa.Column("workflow_id", sa.String(length=40), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("plan_json", sa.Text(), nullable=False),
        sa.Column("max_cycles", sa.Integer(), nullable=False),
        sa.Column("orchestrator", sa.String(length=100), nullable=False),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("workflow_id", "revision"),
    )
    op.execute(
        "INSERT INTO workflow_revisions (workflow_id, revision, title, plan_json, max_cycles, orchestrator, etag, "
        "created_by, created_at, reason) SELECT workflow_id, 1, title, plan_json, max_cycles, orchestrator, etag, "
        "created_by, created_at, '' FROM workflows"
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("workflow_revisions")
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.drop_index("ix_workflows_updated")
        batch_op.drop_column("changes_requested_json")
        batch_op.drop_column("revision")

"""the trail and N-of-M approvals: the plan's etag, required and given approvals, and each
event's etag, hash and signature

Revision ID: c8d4f2a6b1e3
Revises: b7e1c2d4a9f0
Create Date: 2026-11-27 05:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from auditflow import trail

# revision identifiers, used by Alembic.
revision: str = "c8d4f2a6b1e3"
down_revision: str | Sequence[str] | None = "b7e1c2d4a9f0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema. Existing workflows get their plan's etag; their events, written before
    there was a trail, keep no hash (VerifyTrail says so)."""
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("etag", sa.String(length=64), server_default="", nullable=False))
        batch_op.add_column(sa.Column("required_approvals", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("approvals_count", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("approvals_json", sa.Text(), server_default="[]", nullable=False))
    with op.batch_alter_table("workflow_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("etag", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("signature", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("signing_key_id", sa.String(length=16), nullable=True))
    workflows = sa.table(
        "workflows",
        sa.column("workflow_id", sa.String),
        sa.column("title", sa.String),
        sa.column("plan_json", sa.Text),
        sa.column("max_cycles", sa.Integer),
        sa.column("orchestrator", sa.String),
        sa.column("etag", sa.String),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(
            workflows.c.workflow_id,
            workflows.c.title,
            workflows.c.plan_json,
            workflows.c.max_cycles,
            workflows.c.orchestrator,
        )
    ).all()
    for workflow_id, title, plan_json, max_cycles, orchestrator in rows:
        etag = trail.etag(title, plan_json, max_cycles, orchestrator)
        conn.execute(sa.update(workflows).where(workflows.c.workflow_id == workflow_id).values(etag=etag))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("workflow_events", schema=None) as batch_op:
        batch_op.drop_column("signing_key_id")
        batch_op.drop_column("signature")
        batch_op.drop_column("hash")
        batch_op.drop_column("etag")
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.drop_column("approvals_json")
        batch_op.drop_column("approvals_count")
        batch_op.drop_column("required_approvals")
        batch_op.drop_column("etag")

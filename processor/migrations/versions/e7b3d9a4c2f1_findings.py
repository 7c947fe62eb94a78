"""findings: every finding of every run, and how many a run has

Revision ID: e7b3d9a4c2f1
Revises: d5f2a8c1e3b9
Create Date: 2026-11-27 04:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "e7b3d9a4c2f1"
down_revision: str | Sequence[str] | None = "d5f2a8c1e3b9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "findings",
        sa.Column("workflow_id", sa.String(length=64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("procedure", sa.String(length=100), nullable=False),
        sa.Column("severity", sa.SmallInteger(), nullable=False),
        sa.Column("minus_cents", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.String(length=60), nullable=False),
        sa.Column("entry_ids", sa.Text(), nullable=False),
        sa.Column("entry_count", sa.Integer(), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("workflow_id", "number"),
    )
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.create_index(
            "ix_findings_by_severity", ["workflow_id", "severity", "minus_cents", "number"], unique=False
        )
        batch_op.create_index("ix_findings_by_amount", ["workflow_id", "minus_cents", "number"], unique=False)
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("findings_count", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("findings_count")
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.drop_index("ix_findings_by_amount")
        batch_op.drop_index("ix_findings_by_severity")
    op.drop_table("findings")

"""runs by update time, for the tail of events committed by other processors

Revision ID: d5f2a8c1e3b9
Revises: c3a9e5f1b2d7
Create Date: 2026-11-27 03:00:00.000000

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "d5f2a8c1e3b9"
down_revision: str | Sequence[str] | None = "c3a9e5f1b2d7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_updated", ["updated_at"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_updated")

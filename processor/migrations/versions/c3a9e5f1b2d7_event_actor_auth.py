"""run events record how a person who caused them authenticated

Revision ID: c3a9e5f1b2d7
Revises: 28611d65b33f
Create Date: 2026-11-27 02:10:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "c3a9e5f1b2d7"
down_revision: str | Sequence[str] | None = "28611d65b33f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("run_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("actor_auth", sa.String(length=300), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("run_events", schema=None) as batch_op:
        batch_op.drop_column("actor_auth")

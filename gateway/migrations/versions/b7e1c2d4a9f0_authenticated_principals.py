"""authenticated principals: the creator's compared name, how each actor authenticated

Revision ID: b7e1c2d4a9f0
Revises: 85119f3fd344
Create Date: 2026-11-27 02:10:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "b7e1c2d4a9f0"
down_revision: str | Sequence[str] | None = "85119f3fd344"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema. Names stored before were restricted to [A-Za-z0-9._@+-], for which
    lower() is the same as the NFKC case fold the code compares with."""
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("created_by_key", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("created_by_auth", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("decided_by_auth", sa.String(length=300), nullable=True))
    op.execute("UPDATE workflows SET created_by_key = lower(created_by)")
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.alter_column("created_by_key", existing_type=sa.String(length=128), nullable=False)
    with op.batch_alter_table("workflow_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("actor_auth", sa.String(length=300), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("workflow_events", schema=None) as batch_op:
        batch_op.drop_column("actor_auth")
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.drop_column("decided_by_auth")
        batch_op.drop_column("created_by_auth")
        batch_op.drop_column("created_by_key")

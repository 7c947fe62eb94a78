"""the lease epoch: a fencing token raised by every claim

Revision ID: a4c8e2f6b1d3
Revises: f1a7c3e9d5b2
Create Date: 2026-11-27 08:30:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "a4c8e2f6b1d3"
down_revision: str | Sequence[str] | None = "f1a7c3e9d5b2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema. Runs claimed before there were epochs start at 0."""
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_epoch", sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("lease_epoch")

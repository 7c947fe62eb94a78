"""the trail: each event's hash, a completed run's result digest, the signature of a run's
end, and the run's last hash

Revision ID: f1a7c3e9d5b2
Revises: e7b3d9a4c2f1
Create Date: 2026-11-27 05:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "f1a7c3e9d5b2"
down_revision: str | Sequence[str] | None = "e7b3d9a4c2f1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema. Events written before there was a trail keep no hash."""
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_hash", sa.String(length=64), nullable=True))
    with op.batch_alter_table("run_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("result_digest", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("signature", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("signing_key_id", sa.String(length=16), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("run_events", schema=None) as batch_op:
        batch_op.drop_column("signing_key_id")
        batch_op.drop_column("signature")
        batch_op.drop_column("result_digest")
        batch_op.drop_column("hash")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("last_hash")

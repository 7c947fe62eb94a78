"""an index on (created_by_key, status): a submitter's plans awaiting approval are counted
without reading their rows

Revision ID: e6b2c9d1f4a7
Revises: d3a9e5f7c2b1
Create Date: 2026-12-04 18:15:00.000000

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "e6b2c9d1f4a7"
down_revision: str | Sequence[str] | None = "d3a9e5f7c2b1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_index("ix_workflows_creator_status", "workflows", ["created_by_key", "status"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_workflows_creator_status", table_name="workflows")

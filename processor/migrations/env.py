"""Alembic environment of the processor's database (see auditflow/migrations.py)."""

from alembic import context

from auditflow.migrations import run_env
from processor import findings_store  # noqa: F401  (its table is part of the metadata)
from processor.store import metadata

run_env(context, metadata)

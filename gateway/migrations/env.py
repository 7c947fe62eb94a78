"""Alembic environment of the gateway's database (see auditflow/migrations.py)."""

from alembic import context

from auditflow.migrations import run_env
from gateway.store import metadata

run_env(context, metadata)

"""Throwaway PostgreSQL databases for tests, on the server at AUDITFLOW_TEST_POSTGRES
(default: the local one with trust auth). Each test gets its own database, dropped after."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get("AUDITFLOW_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def fresh_database(label: str) -> Iterator[str]:
    """Create an empty database; yield its URL; drop it (closing leftover connections)."""
    name = f"auditflow_{label}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def database_of_kind(kind: str, tmp_path: Path, label: str) -> Iterator[str]:
    """The URL of an empty database: a SQLite file under `tmp_path` ("sqlite"), or a fresh
    PostgreSQL database ("postgresql"), for tests that run on both."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / f'{label}.db'}"
    else:
        with fresh_database(label) as url:
            yield url

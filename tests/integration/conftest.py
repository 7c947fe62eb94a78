"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(gateway, processor) database URLs: SQLite files, or two fresh PostgreSQL databases."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}", f"sqlite:///{tmp_path / 'processor.db'}"
        return
    with fresh_database("gateway") as gateway_url, fresh_database("processor") as processor_url:
        yield gateway_url, processor_url

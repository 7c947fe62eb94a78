"""Each service's Alembic history builds exactly the tables its code uses, on SQLite and on
PostgreSQL, and a restart on an up-to-date database changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, inspect

from auditflow import migrations
from gateway import store as gateway_store
from processor import findings  # noqa: F401  (registers the findings table)
from processor import store as processor_store
from tests.support.postgres import fresh_database

SERVICES: dict[str, tuple[str, MetaData]] = {
    "gateway": ("gateway:migrations", gateway_store.metadata),
    "processor": ("processor:migrations", processor_store.metadata),
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'service.db'}"
    else:
        with fresh_database("migrations") as database_url:
            yield database_url


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_the_history_matches_the_tables_and_upgrading_twice_is_harmless(url: str, service: str) -> None:
    location, metadata = SERVICES[service]
    engine = create_engine(url)
    try:
        migrations.upgrade(engine, location)
        migrations.upgrade(engine, location)  # a restart: nothing to do, nothing fails
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), metadata)
            tables = set(inspect(conn).get_table_names())
        assert differences == []
        assert tables == {*metadata.tables, "alembic_version"}
    finally:
        engine.dispose()

"""Each service's Alembic history builds exactly the tables its code uses, on SQLite and on
PostgreSQL, and a restart on an up-to-date database changes nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, create_engine, inspect

from auditflow import migrations
from gateway import store as gateway_store
from processor import findings_store  # noqa: F401  (registers the findings table)
from processor import store as processor_store
from tests.support.postgres import database_of_kind, fresh_database

SERVICES: dict[str, tuple[str, MetaData]] = {
    "gateway": ("gateway:migrations", gateway_store.metadata),
    "processor": ("processor:migrations", processor_store.metadata),
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_of_kind(request.param, tmp_path, "migrations") as database_url:
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


@pytest.mark.parametrize("service", sorted(migrations.SERVICES))
def test_replicas_starting_together_migrate_one_after_the_other(service: str) -> None:
    """Four replicas migrate a fresh PostgreSQL database at the same moment: every one
    succeeds, and the schema is at the newest revision."""
    location = migrations.SERVICES[service]
    with fresh_database(f"race{service[:4]}") as url:
        engines = [create_engine(url) for _ in range(4)]
        start = threading.Barrier(len(engines))
        failures: list[BaseException] = []

        def migrate(engine: Engine) -> None:
            start.wait()
            try:
                migrations.upgrade(engine, location)
            except BaseException as exc:  # (collected for the assertion below)
                failures.append(exc)

        threads = [threading.Thread(target=migrate, args=(engine,)) for engine in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        try:
            assert not failures, failures
            with engines[0].connect() as conn:
                assert migrations.current(conn) == migrations.head(location)
        finally:
            for engine in engines:
                engine.dispose()

"""A prepared statement must store and return exactly what the same statement through Core
does, on SQLite and on PostgreSQL (real databases)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    insert,
    select,
    update,
)

from auditflow.db import make_engine
from auditflow.prepared import Prepared
from tests.support.postgres import fresh_database

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(40), nullable=False),
    Column("state", Integer, nullable=False),
    Column("flag", Boolean, nullable=False),
    Column("blob", LargeBinary),
    Column("at", DateTime(timezone=True), nullable=False),
)

INSERT = Prepared(
    insert(things)
    .values(
        name=bindparam("name"),
        state=bindparam("state"),
        flag=bindparam("flag"),
        blob=bindparam("blob"),
        at=bindparam("at"),
    )
    .returning(things.c.id)
)
# A literal (state == 1) and a repeated parameter (b_at twice), as in the decision CAS.
CAS = Prepared(
    update(things)
    .where(and_(things.c.name == bindparam("b_name"), things.c.state == 1))
    .values(state=things.c.state + 1, at=bindparam("b_at"), flag=bindparam("b_flag"), blob=bindparam("b_at_blob"))
    .returning(*things.c),
    name="Thing",
)
WHEN = datetime(2026, 11, 25, 12, 30, 45, 123456, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'prepared.db'}", writer=True)
        metadata.create_all(engine)
        yield engine
        engine.dispose()
        return
    with fresh_database("prepared") as url:
        engine = make_engine(url, writer=True)
        metadata.create_all(engine)
        yield engine
        engine.dispose()


def _core_row(engine: Engine, name: str) -> Any:
    with engine.begin() as conn:
        return conn.execute(select(things).where(things.c.name == name)).one()


def test_insert_stores_what_core_stores(engine: Engine) -> None:
    values = {"name": "p", "state": 1, "flag": True, "blob": b"\x00\x01", "at": WHEN}
    with engine.begin() as conn:
        prepared = INSERT.run(conn, values)
        core_id = conn.execute(insert(things).values({**values, "name": "c"}).returning(things.c.id)).scalar_one()
    assert prepared.id == core_id - 1
    via_prepared, via_core = _core_row(engine, "p"), _core_row(engine, "c")
    assert via_prepared[2:] == via_core[2:]  # the stored form (read back by Core) is the same
    assert via_prepared.at.replace(tzinfo=UTC) == WHEN


def test_update_returning_converts_like_core(engine: Engine) -> None:
    with engine.begin() as conn:
        INSERT.run(conn, {"name": "x", "state": 1, "flag": False, "blob": None, "at": WHEN})
        row = CAS.run(conn, {"b_name": "x", "b_at": WHEN, "b_flag": True, "b_at_blob": b"z"})
        again = CAS.run(conn, {"b_name": "x", "b_at": WHEN, "b_flag": True, "b_at_blob": b"z"})
    assert again is None  # the compare-and-set no longer matches: nothing returned
    stored = _core_row(engine, "x")
    assert tuple(row) == tuple(stored)
    assert (row.state, row.flag, bytes(row.blob)) == (2, True, b"z")
    assert isinstance(row.at, datetime)


def test_missing_parameter_is_a_key_error(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(KeyError, match="b_flag"):
        CAS.run(conn, {"b_name": "x", "b_at": WHEN, "b_at_blob": b""})

"""The group-commit writer and the grouped readers: concurrent requests share transactions,
and one bad request never takes its neighbours down with it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, insert, select

from auditflow.db import Database
from auditflow.errors import NotFound

metadata = MetaData()
items = Table("items", metadata, Column("id", Integer, primary_key=True), Column("name", String(20), unique=True))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'test.db'}", metadata)
    await asyncio.to_thread(database.start)
    yield database
    await asyncio.to_thread(database.close)


def add(name: str):  # type: ignore[no-untyped-def]
    def fn(conn: Connection) -> int:
        key = conn.execute(insert(items).values(name=name)).inserted_primary_key
        assert key is not None
        return int(key[0])

    return fn


def names(conn: Connection) -> list[str]:
    return sorted(r[0] for r in conn.execute(select(items.c.name)))


async def test_concurrent_writes_share_commits(db: Database) -> None:
    ids = await asyncio.gather(*(db.write(add(f"n{i}")) for i in range(200)))
    assert len(set(ids)) == 200
    assert db.writes == 200
    assert db.commits < 200  # batched: some requests shared a commit
    assert len(await db.read(names)) == 200


async def test_a_domain_error_refuses_one_write_and_keeps_the_rest(db: Database) -> None:
    def refuse(conn: Connection) -> None:
        raise NotFound("no such item")

    results = await asyncio.gather(db.write(add("a")), db.write(refuse), db.write(add("b")), return_exceptions=True)
    assert isinstance(results[1], NotFound)
    assert await db.read(names) == ["a", "b"]


async def test_a_failing_write_is_retried_alone_and_only_it_fails(db: Database) -> None:
    await db.write(add("taken"))
    results = await asyncio.gather(
        *(db.write(add(name)) for name in ("x", "taken", "y")),  # "taken" breaks the unique constraint
        return_exceptions=True,
    )
    assert isinstance(results[1], Exception) and not isinstance(results[0], Exception)
    assert await db.read(names) == ["taken", "x", "y"]


async def test_sqlite_commits_are_durable_and_wal(db: Database) -> None:
    def pragmas(conn: Connection) -> tuple[str, int]:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        return str(mode), int(sync or 0)

    assert await db.read(pragmas) == ("wal", 2)  # 2 = FULL: a commit survives power loss


async def test_concurrent_reads_share_transactions_and_each_gets_its_own_answer(db: Database) -> None:
    await db.write(add("a"))

    def read(number: int):  # type: ignore[no-untyped-def]
        return lambda conn: (number, names(conn))

    answers = await asyncio.gather(*(db.read(read(i)) for i in range(200)))
    assert answers == [(i, ["a"]) for i in range(200)]
    assert db.reads >= 200 and db.read_batches < db.reads  # batched: some reads shared a transaction


async def test_a_failing_read_fails_alone(db: Database) -> None:
    await db.write(add("a"))

    def broken(conn: Connection) -> None:
        conn.exec_driver_sql("SELECT * FROM no_such_table")

    def refuse(conn: Connection) -> None:
        raise NotFound("no such item")

    reads = (db.read(names), db.read(broken), db.read(refuse), db.read(names))
    results = await asyncio.gather(*reads, return_exceptions=True)
    assert results[0] == results[3] == ["a"]
    assert "no_such_table" in str(results[1])
    assert isinstance(results[2], NotFound)


async def test_a_read_sees_every_commit_that_finished_before_it_was_asked(db: Database) -> None:
    for number in range(20):
        await db.write(add(f"n{number}"))
        assert len(await db.read(names)) == number + 1


async def test_a_scan_never_holds_up_the_quick_reads(db: Database) -> None:
    await db.write(add("a"))

    started, release = threading.Event(), threading.Event()

    def slow(conn: Connection) -> list[str]:
        started.set()
        release.wait(30)  # (on a scan thread: held until the quick read has answered)
        return names(conn)

    scan = asyncio.ensure_future(db.scan(slow))
    assert await asyncio.to_thread(started.wait, 30)  # the scan is running
    assert await db.read(names) == ["a"]
    assert not scan.done()
    release.set()
    assert await scan == ["a"]


async def test_a_request_that_raises_a_base_exception_leaves_nobody_waiting(db: Database) -> None:
    class Escape(BaseException):
        pass

    def escape(conn: Connection) -> None:
        raise Escape

    results = await asyncio.gather(db.read(escape), db.read(names), db.write(escape), return_exceptions=True)
    assert isinstance(results[0], Escape) and isinstance(results[2], Escape)
    assert results[1] == []  # its neighbour is answered
    assert await db.read(names) == []  # and the threads still serve
    assert await db.write(add("b")) == 1


async def test_requests_before_start_or_after_close_fail_at_once(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'idle.db'}", metadata)
    for request in (database.read(names), database.write(add("x")), database.scan(names)):
        with pytest.raises(RuntimeError, match="not started"):
            await request
    await asyncio.to_thread(database.start)
    await asyncio.to_thread(database.close)
    with pytest.raises(RuntimeError, match="already closed"):
        await database.read(names)

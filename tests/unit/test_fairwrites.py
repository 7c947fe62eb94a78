"""The database writer takes each principal's writes in turn, on a real SQLite database: one
principal's backlog of large writes cannot hold up another principal's write for more than
one batch share, and the service's own writes are never held back."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, insert

from auditflow import principal
from auditflow.db import Database
from auditflow.fairwrites import DEFAULT_SHARE, FairWrites
from auditflow.principal import Principal

metadata = MetaData()
items = Table("items", metadata, Column("id", Integer, primary_key=True), Column("name", String(20)))
PLAN = DEFAULT_SHARE  # (the cost of a plan of the largest size allowed)
BACKLOG = 10


@dataclass
class Writer:
    db: Database
    writes: FairWrites


async def _database(tmp_path: Path, writes: FairWrites) -> AsyncIterator[Writer]:
    database = Database(f"sqlite:///{tmp_path / 'test.db'}", metadata, writes=writes)
    await asyncio.to_thread(database.start)
    yield Writer(database, writes)
    await asyncio.to_thread(database.close)


@pytest.fixture
async def fair(tmp_path: Path) -> AsyncIterator[Writer]:
    async for writer in _database(tmp_path, FairWrites()):
        yield writer


@pytest.fixture
async def unfair(tmp_path: Path) -> AsyncIterator[Writer]:
    async for writer in _database(tmp_path, FairWrites(share=0)):
        yield writer


def add(name: str, db: Database) -> Any:
    """The write, answering the commits made before the one that stores it: the writes one
    commit stores answer the same number."""

    def fn(conn: Connection) -> int:
        conn.execute(insert(items).values(name=name))
        return db.commits

    return fn


async def write_as(db: Database, name: str | None, cost: int) -> int:
    """A write from a call of `name` (None: the service's own work), in its own task as a
    call's; the commits made before the one that stored it."""
    if name is not None:
        principal.set_current(Principal(name, frozenset({"submitter"}), via="test"))
    committed_after: int = await db.write(add(name or "service", db), cost=cost)
    return committed_after


async def _after_a_backlog(writer: Writer, others: list[tuple[str | None, int]]) -> tuple[int, list[int]]:
    """Hold the writer, queue the flood's backlog of plans and then `others`' writes, let it go:
    how many of the flood's writes had committed when each of the others' did."""
    held, release = threading.Event(), threading.Event()

    def hold(conn: Connection) -> None:
        held.set()
        release.wait(30)

    db = writer.db
    holding = asyncio.create_task(db.write(hold))
    await asyncio.to_thread(held.wait, 30)
    flood = [asyncio.create_task(write_as(db, "flood", PLAN)) for _ in range(BACKLOG)]
    others_ = [asyncio.create_task(write_as(db, name, cost)) for name, cost in others]
    await asyncio.sleep(0)  # (each task runs up to its write's queueing)
    assert writer.writes.waiting() == BACKLOG + len(others)
    release.set()
    await holding
    # (by the commits that stored them, not by which tasks are done when one is looked at:
    # the loop may have settled the next commit's writes before this task runs again)
    floods, others_at = await asyncio.gather(asyncio.gather(*flood), asyncio.gather(*others_))
    before = [sum(1 for at in floods if at <= other) for other in others_at]
    return len(flood), before


async def test_another_principal_waits_for_one_share_of_a_backlog_not_all_of_it(fair: Writer) -> None:
    total, before = await _after_a_backlog(fair, [("alice", 0), ("bob", 0)])
    assert total == BACKLOG
    assert all(n <= 1 for n in before), before  # (one plan's worth shared their commit)


async def test_the_service_own_writes_are_not_held_back(fair: Writer) -> None:
    _, before = await _after_a_backlog(fair, [(None, 0), ("alice", 0)])
    assert all(n <= 1 for n in before), before


async def test_without_a_share_the_whole_backlog_goes_first(unfair: Writer) -> None:
    """What the share is for: first come, first served, alice's write commits with the whole
    backlog queued before it."""
    _, before = await _after_a_backlog(unfair, [("alice", 0)])
    assert before == [BACKLOG]


async def test_a_principal_alone_still_commits_its_small_writes_together(fair: Writer) -> None:
    commits = fair.db.commits
    await asyncio.gather(*(write_as(fair.db, "alice", 100) for _ in range(50)))
    assert fair.db.commits - commits < 50


def test_the_waits_by_principal_name_the_slowest_first() -> None:
    writes = FairWrites()
    for name, seconds in (("alice", 0.002), ("flood", 0.080), ("alice", 0.001)):
        writes._record(name, seconds)
    summary = writes.summary()
    assert summary.startswith("flood 1 writes"), summary
    assert "alice 2 writes, mean 1.5 ms" in summary, summary
    p99 = writes.waits["alice"].percentile(0.99)
    assert 0.002 <= p99 <= 0.002 * 1.2, p99

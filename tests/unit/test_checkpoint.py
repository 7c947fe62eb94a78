"""The write-ahead log is copied back by the Database's checkpoint thread, never inside a
commit; PostgreSQL and in-memory SQLite have none."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from sqlalchemy import Column, Connection, Integer, MetaData, Table, Text, insert

from auditflow import checkpoint
from auditflow.db import Database

metadata = MetaData()
blobs = Table("blobs", metadata, Column("id", Integer, primary_key=True), Column("body", Text))
ROW = "x" * 100_000


def store(conn: Connection) -> None:
    conn.execute(insert(blobs).values(body=ROW))


async def write_megabytes(db: Database, megabytes: int) -> None:
    for _ in range(megabytes * 10):  # (one commit each: every commit could have checkpointed)
        await db.write(store)


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def started(path: Path, *, every: float = checkpoint.EVERY) -> AsyncIterator[Database]:
    """A started Database on the SQLite file `path` (its checkpointer's period `every`)."""
    database = Database(f"sqlite:///{path}", metadata)
    assert database.checkpointer is not None
    database.checkpointer.every = every
    await asyncio.to_thread(database.start)
    try:
        yield database
    finally:
        await asyncio.to_thread(database.close)


async def test_the_thread_copies_the_log_back_once_it_holds_enough(tmp_path: Path) -> None:
    async with started(tmp_path / "test.db", every=3600) as db:  # (the size alone sets it off)
        await write_megabytes(db, 6)
        assert db.checkpointer is not None
        checkpointer = db.checkpointer
        # (the count goes up once SQLite's checkpoint has returned, after the log shrank)
        await until(lambda: checkpointer.checkpoints >= 1 and checkpointer.log.pending_bytes() < checkpoint.WAL_BYTES)


async def test_a_commit_never_checkpoints_inline(tmp_path: Path) -> None:
    async with started(tmp_path / "test.db") as db:
        assert db.checkpointer is not None
        await asyncio.to_thread(db.checkpointer.stop)  # (nothing else copies the log back now)
        await write_megabytes(db, 6)  # (past SQLite's automatic threshold of 1,000 pages, 4 MiB)
        assert db.checkpointer.log.pending_bytes() >= 6_000_000


async def test_a_small_log_is_copied_back_within_the_period(tmp_path: Path) -> None:
    async with started(tmp_path / "small.db", every=3600) as db:
        await db.write(store)
        assert db.checkpointer is not None
        log = db.checkpointer.log
        assert log.pending_bytes() > 0
        db.checkpointer.every = 0.1  # (from now: the thread reads its period at each look)
        await until(lambda: log.pending_bytes() == 0)


async def test_close_stops_the_thread(tmp_path: Path) -> None:
    async with started(tmp_path / "closing.db") as db:
        thread = db.checkpointer._thread if db.checkpointer else None
        assert thread is not None and thread.is_alive()
    assert not thread.is_alive()


def test_postgresql_and_memory_have_no_checkpointer() -> None:
    assert Database("sqlite:///:memory:", metadata).checkpointer is None
    assert Database("postgresql+psycopg://postgres@127.0.0.1:5432/test", metadata).checkpointer is None


def test_no_log_has_nothing_pending(tmp_path: Path) -> None:
    assert checkpoint.LogIndex(tmp_path / "absent.db").pending_bytes() == 0


# Run in another process: which process holds a lock on the -shm file's "DMS" byte (offset 128
# in SQLite's unix VFS), the shared lock by which connections say the wal-index is in use (0:
# none). A process never sees its own locks, hence another one.
WHO_HOLDS_THE_INDEX = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
flock = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 128, 1, 0)
kind, _, _, _, pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, flock))
print(0 if kind == fcntl.F_UNLCK else pid)
"""


async def test_the_checkpointer_never_drops_the_locks_of_this_process_on_the_log_index(tmp_path: Path) -> None:
    """Closing a descriptor of a file drops all the process's POSIX locks on it: a look at
    the log that opened and closed the -shm file let another process (a page worker) rebuild
    the index under this process's writer, which died of SIGBUS."""
    async with started(tmp_path / "locks.db") as db:
        await db.write(store)
        assert db.checkpointer is not None
        checkpointer = db.checkpointer
        looked = checkpointer.looks
        await until(lambda: checkpointer.looks >= looked + 3)  # (it has read the index since)
        probe = [sys.executable, "-c", WHO_HOLDS_THE_INDEX, str(tmp_path / "locks.db-shm")]
        holder = await asyncio.to_thread(subprocess.run, probe, capture_output=True, text=True, check=True)
        assert int(holder.stdout) == os.getpid()

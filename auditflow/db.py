"""Storage: one SQLAlchemy engine per service, a single writer thread with group commit, and
a small pool of reader threads.

Why a writer thread: a durable commit (SQLite WAL, synchronous=FULL) costs an fsync, and a
commit per request tops out far below what the gateway must take. The writer drains every
write request that is waiting, runs them in one transaction and commits once, so concurrent
callers share the fsync. Blocking database work never runs on the event loop.

Contract for a write function `fn(conn)`: it may raise `AuditflowError` only before it
writes anything (the batch goes on without it); any other exception rolls the batch back and
every item in it is retried alone, so one bad item never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url

from auditflow import migrations
from auditflow.errors import AuditflowError

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 512


@dataclass
class _WriteRequest:
    fn: Callable[[Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit in WAL mode survives power loss, not just a process crash.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_immediate(conn: Connection) -> None:
    # Take SQLite's write lock at BEGIN so that a writer never fails to upgrade a read lock.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _begin_deferred(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


def make_engine(url: str, *, writer: bool) -> Engine:
    """An engine for `url`; for SQLite, WAL + synchronous=FULL and explicit BEGINs."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "isolation_level": None})
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _begin_immediate if writer else _begin_deferred)
    return engine


class Database:
    """A service's database: `await write(fn)` and `await read(fn)`, both off the event loop."""

    def __init__(self, url: str, metadata: MetaData, *, migrations: str | None = None, readers: int = 4) -> None:
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        self.write_engine = make_engine(url, writer=True)
        self.read_engine = make_engine(url, writer=False)
        self._metadata = metadata
        self._migrations = migrations
        self._queue: queue.SimpleQueue[_WriteRequest | None] = queue.SimpleQueue()
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="db-read")
        self._writer: threading.Thread | None = None
        self.commits = 0
        self.writes = 0

    def create_schema(self) -> None:
        """Bring the schema up to date (blocking; call before serving): run the service's
        Alembic migrations, or, without any, create the missing tables."""
        if self._migrations is None:
            self._metadata.create_all(self.write_engine)
        else:
            migrations.upgrade(self.write_engine, self._migrations)

    def start(self) -> None:
        self.create_schema()
        self._writer = threading.Thread(target=self._write_loop, name="db-writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout=10)
            self._writer = None
        self._readers.shutdown(wait=True, cancel_futures=True)
        self.write_engine.dispose()
        self.read_engine.dispose()

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run fn in a write transaction shared with concurrent writers; wait for its commit."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_WriteRequest(fn, future, loop))
        return await future

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run fn in a read transaction on a reader thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_sync, fn)

    def _read_sync(self, fn: Callable[[Connection], T]) -> T:
        with self.read_engine.begin() as conn:
            return fn(conn)

    def read_sync(self, fn: Callable[[Connection], T]) -> T:
        """Blocking read, for start-up code and tools."""
        return self._read_sync(fn)

    # --- the writer thread -------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[_WriteRequest]) -> None:
        outcomes: list[tuple[_WriteRequest, bool, Any]] = []
        try:
            with self.write_engine.begin() as conn:
                for item in batch:
                    try:
                        outcomes.append((item, True, item.fn(conn)))
                    except AuditflowError as exc:
                        outcomes.append((item, False, exc))
            self.commits += 1
            self.writes += len(batch)
        except Exception as exc:
            if len(batch) == 1:
                logger.exception("write failed")
                self._resolve([(batch[0], False, exc)])
                return
            logger.warning("a batched write failed; retrying its %d items one by one", len(batch))
            for item in batch:
                self._run_batch([item])
            return
        self._resolve(outcomes)

    @staticmethod
    def _resolve(outcomes: list[tuple[_WriteRequest, bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_WriteRequest, bool, Any]]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, items in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[_WriteRequest, bool, Any]]) -> None:
    for item, ok, value in items:
        if item.future.done():
            continue
        if ok:
            item.future.set_result(value)
        else:
            item.future.set_exception(value)

"""Storage: one SQLAlchemy engine per service, a single writer thread with group commit, and
a few reader threads that group reads the same way.

Why a writer thread: a durable commit (SQLite WAL, synchronous=FULL) costs an fsync, and a
commit per request tops out far below what the gateway must take. The writer drains every
write request that is waiting, runs them in one transaction and commits once, so concurrent
callers share the fsync. Blocking database work never runs on the event loop.

Reads are grouped too: a reader thread takes every read request that is waiting and runs them
in one read transaction. A read per thread hand-over and per transaction cost more than the
query itself (a status look-up through a thread pool cost the gateway more CPU than an
Approve), and reads queued at the same moment may share a snapshot: each still sees every
commit that finished before it was asked for. A batch answers when its last read is done, so
reads that may take long (scans, large pages) go through `scan` instead, on threads of their
own, and never hold up the quick look-ups.

When the database cannot be reached (a restart, a network cut, a statement timeout), every
waiting request fails with `Unavailable` (UNAVAILABLE to the caller, who may retry), the log
says so once per outage (a WARNING, then an INFO when it answers again), and a failed batch
is not retried item by item. On PostgreSQL every session has a `lock_timeout`, a
`statement_timeout` and an `idle_in_transaction_session_timeout` (`PG_TIMEOUTS`), so that a
frozen peer cannot hold rows or a connection forever and nothing waits on a lock without end.
A lock wait that runs out is not an outage: the row is busy, that request alone answers
UNAVAILABLE, and its batch neighbours are retried without it. A write that must take a row
another process may hold (a cancel of a run leased elsewhere) goes through `write_apart`, in
a transaction of its own, so that the writer and every other run's commit never wait behind
that lock.

Contract for a write function `fn(conn)`: it may raise `AuditflowError` only before it
writes anything (the batch goes on without it); any other exception rolls the batch back and
every item in it is retried alone, so one bad item never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from auditflow import metrics, migrations
from auditflow.checkpoint import Checkpointer
from auditflow.errors import AuditflowError, Unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 512
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes: the most a checkpointed log leaves on disk
# Milliseconds. A lock held longer than lock_timeout fails the waiting statement (UNAVAILABLE,
# retried by the caller) instead of stalling the writer; a session idle inside a transaction
# (a frozen process) is ended by the server, which releases its locks.
PG_TIMEOUTS = {"lock_timeout": 5_000, "statement_timeout": 60_000, "idle_in_transaction_session_timeout": 30_000}


@dataclass
class _Request:
    fn: Callable[[Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    cost: int = 0  # (bytes the write stores, roughly: what a fair write queue charges for it)


class Requests(Protocol):
    """What the writer and readers take their requests from: a `queue.SimpleQueue`, or a
    queue that orders the writes otherwise (`auditflow.fairwrites`); None says stop."""

    def put(self, item: _Request | None) -> None: ...
    def get(self) -> _Request | None: ...
    def get_nowait(self) -> _Request | None: ...


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit in WAL mode survives power loss, not just a process crash.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    # A commit never checkpoints the log inline: the Database's Checkpointer does it on a
    # thread of its own (auditflow/checkpoint.py). The log left behind is at most 64 MiB.
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
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
        options = " ".join(f"-c {name}={value}" for name, value in PG_TIMEOUTS.items())
        return create_engine(url, pool_pre_ping=True, connect_args={"options": options})
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "isolation_level": None})
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _begin_immediate if writer else _begin_deferred)
    return engine


class Database:
    """A service's database: `await write(fn)` and `await read(fn)`, both off the event loop."""

    def __init__(
        self,
        url: str,
        metadata: MetaData,
        *,
        migrations: str | None = None,
        readers: int = 4,
        name: str = "database",
        writes: Requests | None = None,
    ) -> None:
        self.url = url
        self.name = name  # (the `database` label of its metrics)
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        self.write_engine = make_engine(url, writer=True)
        self.read_engine = make_engine(url, writer=False)
        self._metadata = metadata
        self._migrations = migrations
        self._head: str | None = None  # the newest revision, once the schema is created
        self._queue: Requests = writes if writes is not None else queue.SimpleQueue()
        self._read_queue: Requests = queue.SimpleQueue()
        self._reader_count = readers
        self._readers: list[threading.Thread] = []
        self._scanners = ThreadPoolExecutor(max_workers=2, thread_name_prefix="db-scan")
        self._apart = ThreadPoolExecutor(max_workers=2, thread_name_prefix="db-apart")
        self._writer: threading.Thread | None = None
        self.checkpointer = _checkpointer(url)
        self.commits = 0
        self.writes = 0
        self.read_batches = 0  # (counted by several threads: approximate, for tests and benchmarks)
        self.reads = 0
        self._outage = _Outage()
        measured = metrics.of(name)  # (its service's registry)
        self._measured = {
            thread: (measured.db_batch_size.labels(name, thread), measured.db_transaction_seconds.labels(name, thread))
            for thread in ("writer", "reader")
        }
        self._lock_timeouts = measured.db_lock_timeouts.labels(name)
        # PostgreSQL: the server processes of this service's writing connections, so that a
        # listener can tell this process's own notifications from other processes'.
        self.backend_pids: set[int] = set()
        if not self.is_sqlite:
            event.listen(self.write_engine, "connect", self._connected)
            for closing in ("close", "invalidate", "close_detached"):
                event.listen(self.write_engine, closing, self._closed)

    def _connected(self, dbapi_conn: Any, record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        record.info["backend_pid"] = pid = int(cursor.fetchone()[0])
        cursor.close()
        dbapi_conn.commit()  # (psycopg opened a transaction for the SELECT)
        self.backend_pids.add(pid)

    def _closed(self, dbapi_conn: Any, record: Any = None, *_: Any) -> None:
        pid = record.info.get("backend_pid") if record is not None and hasattr(record, "info") else None
        if pid is not None:
            self.backend_pids.discard(pid)

    def observe_outages(self, observer: OutageObserver) -> None:
        self._outage.observer = observer

    def create_schema(self) -> None:
        """Bring the schema up to date (blocking; call before serving): run the service's
        Alembic migrations, or, without any, create the missing tables."""
        if self._migrations is None:
            self._metadata.create_all(self.write_engine)
        else:
            migrations.upgrade(self.write_engine, self._migrations)
            self._head = migrations.head(self._migrations)

    def start(self) -> None:
        self.create_schema()
        if self.checkpointer is not None:
            self.checkpointer.start()
        self._writer = threading.Thread(target=self._write_loop, name="db-writer", daemon=True)
        self._writer.start()
        for number in range(self._reader_count):
            reader = threading.Thread(target=self._read_loop, name=f"db-read-{number}", daemon=True)
            reader.start()
            self._readers.append(reader)

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout=10)
            self._writer = None
        for _reader in self._readers:
            self._read_queue.put(None)
        for reader in self._readers:
            reader.join(timeout=10)
        self._readers.clear()
        self._scanners.shutdown(wait=True, cancel_futures=True)
        self._apart.shutdown(wait=True, cancel_futures=True)
        self.write_engine.dispose()
        self.read_engine.dispose()
        if self.checkpointer is not None:  # (after the connections: it drops the process's locks)
            self.checkpointer.stop()

    async def write(self, fn: Callable[[Connection], T], *, cost: int = 0) -> T:
        """Run fn in a write transaction shared with concurrent writers; wait for its commit.
        `cost`: about how many bytes it stores, when that is much (a plan)."""
        return await self._submit(self._queue, fn, cost)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run fn in a read transaction (shared with reads asked for at the same moment) on a
        reader thread. fn must not write."""
        return await self._submit(self._read_queue, fn)

    async def scan(self, fn: Callable[[Connection], T]) -> T:
        """A read that may take long (a scan, a large page): in a transaction of its own on a
        thread of its own, so that it never holds up the quick reads batched together."""
        self._check_started()
        return await asyncio.get_running_loop().run_in_executor(self._scanners, self._alone, self.read_engine, fn)

    async def schema_problem(self) -> str | None:
        """Why this database cannot serve (None: reachable, and its schema at the newest
        revision); for a readiness probe. Raises nothing: an outage is a problem to report."""
        try:
            found = await self.read(migrations.current)
        except Exception as exc:  # (Unavailable during an outage)
            return f"the database is unreachable ({type(exc).__name__})"
        if self._migrations is not None and found != self._head:
            return f"the schema is at revision {found}, not {self._head}: run the migrations"
        return None

    def read_blocking(self, fn: Callable[[Connection], T]) -> T:
        """A read on the calling thread, which must not be the event loop (a metrics scrape)."""
        return self._alone(self.read_engine, fn)

    async def write_apart(self, fn: Callable[[Connection], T]) -> T:
        """A write that may wait for a row lock held by another process (up to lock_timeout,
        then `Unavailable`): in a transaction of its own on a thread of its own, never in the
        writer's batch, which would wait with it. SQLite has no row locks and one writer: there
        it is an ordinary `write`."""
        if self.is_sqlite:
            return await self.write(fn)
        self._check_started()
        return await asyncio.get_running_loop().run_in_executor(self._apart, self._alone, self.write_engine, fn)

    async def _submit(self, requests: Requests, fn: Callable[[Connection], T], cost: int = 0) -> T:
        self._check_started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        requests.put(_Request(fn, future, loop, cost))
        return await future

    def _check_started(self) -> None:
        """Fail at once rather than queue a request that no thread will ever take."""
        if self._writer is None:
            raise RuntimeError("the database is not started, or already closed")

    def _alone(self, engine: Engine, fn: Callable[[Connection], T]) -> T:
        """fn in a transaction of its own (on the calling thread)."""
        try:
            with engine.begin() as conn:
                result = fn(conn)
        except BaseException as exc:
            if contended(exc):
                self._lock_timeouts.inc()
                raise _busy() from None
            if unreachable(exc):
                raise self._outage.began(exc) from None
            raise
        self._outage.ended()
        return result

    # --- the writer and reader threads -------------------------------------------------

    def _write_loop(self) -> None:
        self._drain(self._queue, self._run_batch)

    def _read_loop(self) -> None:
        self._drain(self._read_queue, self._run_reads)

    @staticmethod
    def _drain(requests: Requests, run: Callable[[list[_Request]], None]) -> None:
        """Take every request that is waiting (up to MAX_BATCH) and run them together, until
        a None says stop."""
        while True:
            first = requests.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = requests.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            run(batch)
            if stop:
                return

    def _run_batch(self, batch: list[_Request]) -> None:
        self._run_together(self.write_engine, batch, self._run_batch, self._count_commit)

    def _run_reads(self, batch: list[_Request]) -> None:
        self._run_together(self.read_engine, batch, self._run_reads, self._count_reads, log_failure=False)

    def _count_commit(self, size: int, seconds: float) -> None:
        self.commits += 1
        self.writes += size
        batch, took = self._measured["writer"]
        batch.observe(size)
        took.observe(seconds)

    def _count_reads(self, size: int, seconds: float) -> None:
        self.read_batches += 1
        self.reads += size
        batch, took = self._measured["reader"]
        batch.observe(size)
        took.observe(seconds)

    def _run_together(
        self,
        engine: Engine,
        batch: list[_Request],
        alone: Callable[[list[_Request]], None],
        count: Callable[[int, float], None],
        *,
        log_failure: bool = True,
    ) -> None:
        """Run a batch in one transaction, count it, then settle its futures (counted first,
        so that a caller woken by its answer sees the counters include it).

        Any exception (even a BaseException) but an AuditflowError rolls the batch back, and
        `alone` runs each item by itself, so that one bad item never fails its neighbours. A
        failed read is left to its caller to report (`log_failure=False`)."""
        outcomes: list[tuple[_Request, bool, Any]] = []
        started = time.perf_counter()
        try:
            with engine.begin() as conn:
                for item in batch:
                    try:
                        outcomes.append((item, True, item.fn(conn)))
                    except AuditflowError as exc:
                        outcomes.append((item, False, exc))
        except BaseException as exc:  # (not only Exception: a thread must leave nobody waiting)
            if unreachable(exc):  # every item would fail the same way: no retry one by one
                refusal = self._outage.began(exc)
                self._resolve([(item, False, refusal) for item in batch])
                return
            if len(batch) == 1:
                if contended(exc):
                    self._lock_timeouts.inc()
                    self._resolve([(batch[0], False, _busy())])
                    return
                if log_failure:
                    logger.exception("write failed")
                self._resolve([(batch[0], False, exc)])
                return
            logger.warning("a batch of %d failed; retrying its items one by one", len(batch))
            for item in batch:
                alone([item])
            return
        count(len(batch), time.perf_counter() - started)
        self._outage.ended()
        self._resolve(outcomes)

    @staticmethod
    def _resolve(outcomes: list[tuple[_Request, bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, bool, Any]]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, items in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, items)


def _checkpointer(url: str) -> Checkpointer | None:
    """The log's checkpointer of a SQLite file (None for PostgreSQL and in-memory SQLite,
    which have no write-ahead log to copy back)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Checkpointer(Path(parsed.database).expanduser())


def contended(exc: BaseException) -> bool:
    """A lock wait ran out (PostgreSQL's lock_timeout, SQLSTATE 55P03): a row is held by
    another transaction, the database itself answers."""
    return isinstance(exc, sa_exc.DBAPIError) and getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE


def _busy() -> Unavailable:
    logger.info("a row stayed locked by another transaction past lock_timeout; the call answers UNAVAILABLE")
    return Unavailable("the record is locked by another transaction (another processor may be stalled); try again")


_LOCK_NOT_AVAILABLE = "55P03"


def unreachable(exc: BaseException) -> bool:
    """The database did not answer (connection refused or lost, server shutting down, a
    statement timeout), as opposed to a statement the database refused or a lock wait that
    ran out (`contended`)."""
    if contended(exc):
        return False
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return False
    if isinstance(exc.orig, sqlite3.Error):  # SQLite's OperationalError also means "no such table"
        return str(exc.orig).startswith(_SQLITE_UNREACHABLE)
    return True


_SQLITE_UNREACHABLE = ("database is locked", "disk I/O error", "unable to open database file")


class OutageObserver(Protocol):
    """Told when the database stops answering and when it answers again (from a database
    thread, once per change): the servers' health follows it."""

    def database_reachable(self, reachable: bool) -> None: ...


class _Outage:
    """Whether the database is unreachable now: one WARNING when it stops answering, one INFO
    when it answers again (any thread), and the observer told of both."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None
        self.observer: OutageObserver | None = None

    def began(self, exc: BaseException) -> Unavailable:
        with self._lock:
            first, self._since = self._since is None, self._since or time.monotonic()
        if first:
            cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            logger.warning(
                "the database is unreachable (%s: %s); calls answer UNAVAILABLE until it is back",
                type(exc).__name__,
                cause,
            )
            if self.observer is not None:
                self.observer.database_reachable(False)
        return Unavailable("the database is unavailable; try again shortly")

    def ended(self) -> None:
        if self._since is None:  # (the common case: no lock taken)
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            logger.info("the database answers again (after %.1f s)", time.monotonic() - since)
            if self.observer is not None:
                self.observer.database_reachable(True)


def _settle(items: list[tuple[_Request, bool, Any]]) -> None:
    for item, ok, value in items:
        if item.future.done():
            continue
        if ok:
            item.future.set_result(value)
        else:
            item.future.set_exception(value)

"""ListWorkflows' pages and the collection watch's initial lists, built in worker processes:
the gateway's interpreter only passes the bytes on.

A page of 500 summaries costs tens of milliseconds of Python (its rows, 500 messages, their
encoding), and its proto3 JSON for REST as much again. Run on threads of the gateway, that
work holds the one interpreter every other call needs: a principal that asks for its largest
pages without pause slowed everyone else's Approve, GetStatus and WatchStatus by more than
any other load it could make. So a page is built from first read to last byte in a process
of its own:

- each worker opens its own read-only engine on the gateway's database (SQLite in WAL mode
  reads beside the writer; PostgreSQL takes one connection per worker), and reads the page
  in one transaction;
- workers run at a lower CPU priority (`NICE`): a page is bulk work, a status look-up is not;
- at most one page per worker is under way, and the waiting pages are taken one principal
  at a time in turn (`gateway.fairslots`): a principal that asks for page after page never
  queues ahead of someone else's one page;
- a worker that dies (killed, out of memory) fails the pages it was building with
  UNAVAILABLE (retry), and a new pool takes the next pages; a database that does not answer
  is UNAVAILABLE too, as for every other call;
- a worker whose gateway is gone (killed: it never stopped its pool) exits within a second.

A collection watch's initial list (WatchWorkflows: up to 500 summaries, each its own message)
costs the same and is built the same way, taking its turns at the same workers; so is a
resumed watch's catch-up (every workflow written since its token: a token of long ago asks for
them all), a batch at a time.

The pool starts its workers on the first page (a gateway that is never asked for a list
never starts one), with `spawn`: a fork of a process with gRPC's threads is not safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Connection, Engine

from auditflow import metrics
from auditflow.db import contended, make_engine, unreachable
from auditflow.errors import Unavailable
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import pages
from gateway.fairslots import FairSlots

logger = logging.getLogger(__name__)

DEFAULT_WORKERS = 2
MAX_WORKERS = 32
ORPHAN_CHECK = 1.0  # seconds between a worker's looks at whether its gateway still runs
NICE = 5  # added to a worker's nice value: under a full CPU it gets about a third of a normal process's share

R = TypeVar("R")  # what a worker is asked for
T = TypeVar("T")  # what it answers

_engine: Engine | None = None  # (a worker process's own)


class PageWorkers:
    """`await page(request, encoding, key)`: the page's bytes, built in a worker process
    (`first_list` and `since`: a collection watch's initial list and catch-up)."""

    def __init__(self, database_url: str, workers: int = DEFAULT_WORKERS) -> None:
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"page workers: between 1 and {MAX_WORKERS}, not {workers}")
        self._url = database_url
        self._workers = workers
        self._slots = FairSlots(workers)
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()  # (the pool is replaced from done callbacks too)
        self._closed = False

    @property
    def slots(self) -> FairSlots:
        """The turns at the workers: a page holds a slot from its turn until it is built (its
        `waiting`: the pages waiting for a worker)."""
        return self._slots

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (none before the first page): for operators and tests."""
        with self._lock:
            pool = self._pool
        return sorted(pool._processes or {}) if pool is not None else []  # (the executor keeps no public list)

    async def page(self, request: pages.Request | None, encoding: pages.Encoding, key: str) -> bytes:
        """The page's bytes in `encoding` (an empty page for None: a filter that can match
        nothing); `key` names the principal whose turn it takes."""
        if request is None:
            return pages.encoded(wpb.ListWorkflowsResponse(), encoding)
        return await self._built(key, _build, request, encoding)

    async def first_list(
        self, request: pages.FirstList, encoding: pages.Encoding, key: str
    ) -> tuple[list[pages.Listed], str]:
        """A collection watch's initial list, each message encoded, and the next page's token."""
        return await self._built(key, _first_list, request, encoding)

    async def since(
        self, request: pages.Since, encoding: pages.Encoding, key: str
    ) -> tuple[list[pages.Listed], datetime | None]:
        """One batch of a resumed collection watch's catch-up, each message encoded, and where
        the next batch starts (None after the last)."""
        return await self._built(key, _since, request, encoding)

    async def _built(self, key: str, work: Callable[[R, pages.Encoding], T], request: R, encoding: pages.Encoding) -> T:
        """`work(request, encoding)` in a worker, at `key`'s turn."""
        pool = self._pool if self._pool is not None else await asyncio.to_thread(self._started)  # (it blocks)
        metrics.PAGES_WAITING.inc()
        try:
            await self._slots.acquire(key)
        finally:
            metrics.PAGES_WAITING.dec()
        try:
            built = self._submit(pool, work, request, encoding)
        except BaseException:
            self._slots.release()
            raise
        loop = asyncio.get_running_loop()
        # The slot is the worker's until the page is built, even when its caller gives up first.
        built.add_done_callback(lambda _: _soon(loop, self._slots.release))
        try:
            return await asyncio.wrap_future(built)
        except BrokenProcessPool:
            raise _stopped() from None

    def _started(self) -> ProcessPoolExecutor:
        """The pool, its workers started (blocking: on a thread). The executor starts a worker
        when a task finds none idle: one small task per worker starts them all here."""
        with self._lock:
            if self._closed:
                raise _shutting_down()
            if self._pool is None:
                spawn = multiprocessing.get_context("spawn")
                started = (self._url, os.getpid())
                self._pool = ProcessPoolExecutor(self._workers, spawn, initializer=_start, initargs=started)
                for _ in range(self._workers):
                    self._pool.submit(os.getpid)
            return self._pool

    def _submit(
        self, pool: ProcessPoolExecutor, work: Callable[[R, pages.Encoding], T], request: R, encoding: pages.Encoding
    ) -> Future[T]:
        if self._closed:
            raise _shutting_down()
        try:
            built = pool.submit(work, request, encoding)
        except BrokenProcessPool:
            self._replace(pool)
            raise _stopped() from None
        built.add_done_callback(lambda done: self._check(pool, done))
        return built

    def _check(self, pool: ProcessPoolExecutor, done: Future[T]) -> None:
        if not done.cancelled() and isinstance(done.exception(), BrokenProcessPool):
            self._replace(pool)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Drop a pool whose worker died (the next page starts a new one)."""
        with self._lock:
            if self._pool is not broken:
                return
            self._pool = None
        metrics.PAGE_WORKER_FAILURES.inc()
        logger.warning("a page worker process stopped; the pages it had answer UNAVAILABLE, new workers take the next")
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the workers (blocking: call off the event loop); pages asked for later answer
        UNAVAILABLE."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _stopped() -> Unavailable:
    return Unavailable("the worker building the page stopped; try again")


def _shutting_down() -> Unavailable:
    return Unavailable("the gateway is shutting down")


def _soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # (the loop is closed: nothing waits any more)
        loop.call_soon_threadsafe(callback)


# --- in the worker process --------------------------------------------------------------


def _start(database_url: str, gateway: int) -> None:
    """A worker's start: lower its priority, watch for its gateway's end, open its engine."""
    global _engine
    os.nice(NICE)
    threading.Thread(target=_exit_with, args=(gateway,), name="orphan-check", daemon=True).start()
    _engine = make_engine(database_url, writer=False)


def _exit_with(gateway: int) -> None:
    """End this worker when its gateway is gone. A gateway that is killed never stops its
    pool, and a worker waiting for its next page would wait for good, holding its database
    connection (a child whose parent died has another one)."""
    while os.getppid() == gateway:
        time.sleep(ORPHAN_CHECK)
    os._exit(0)


def _build(request: pages.Request, encoding: pages.Encoding) -> bytes:
    """One page of ListWorkflows, read and encoded in this worker."""
    return pages.encoded(_read(functools.partial(pages.build, request=request)), encoding)


def _first_list(request: pages.FirstList, encoding: pages.Encoding) -> tuple[list[pages.Listed], str]:
    """A collection watch's initial list, read and encoded in this worker."""
    return _read(functools.partial(pages.first_list, request=request, encoding=encoding))


def _since(request: pages.Since, encoding: pages.Encoding) -> tuple[list[pages.Listed], datetime | None]:
    """A batch of a collection watch's catch-up, read and encoded in this worker."""
    return _read(functools.partial(pages.since, request=request, encoding=encoding))


def _read(work: Callable[[Connection], T]) -> T:
    """`work` in one read transaction; an unreachable or busy database is UNAVAILABLE, as the
    gateway's own reads answer it."""
    assert _engine is not None, "not a page worker"
    try:
        with _engine.begin() as conn:
            return work(conn)
    except Exception as exc:
        if unreachable(exc) or contended(exc):
            raise Unavailable("the database is unavailable; try again shortly") from None
        raise

"""Keeps the gateway's copy of each dispatched run's status up to date.

The processor owns a run's status and events after dispatch. Get and List on the gateway
answer from the workflow row, so for every dispatched workflow that has not ended the mirror
follows the processor's WatchStatus and copies each snapshot onto the row. It resumes after
a gateway restart (every dispatched, unfinished workflow is followed again) and after the
processor comes back (it reconnects with backoff from the last sequence it copied).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import grpc
from sqlalchemy import Connection

from auditflow import statuses
from auditflow.db import Database
from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import processor_service_pb2_grpc as ppb_grpc
from auditflow.v1 import workflow_pb2 as pb
from gateway import store

logger = logging.getLogger(__name__)


class Mirror:
    """Follows dispatched runs and copies their snapshots onto the workflow rows.

    At most `max_followed` runs are followed at a time, the oldest approvals first (the
    processor claims the oldest runs first), so that a backlog of thousands of queued runs
    costs waiting tasks, not open streams. A run beyond the window is mirrored when it enters
    it; a client that watches it gets the processor's events directly in any case.
    """

    def __init__(
        self,
        db: Database,
        stub: ppb_grpc.ProcessorServiceAsyncStub,
        on_change: Callable[[str], None],
        *,
        max_followed: int = 64,
        max_backoff: float = 5.0,
    ) -> None:
        self._db = db
        self._stub = stub
        self._on_change = on_change
        self._max_backoff = max_backoff
        self._slots = asyncio.Semaphore(max_followed)
        self._followers: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        for workflow_id, last_sequence in await self._db.scan(store.to_follow):
            self.follow(workflow_id, last_sequence)

    async def stop(self) -> None:
        tasks = list(self._followers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def following(self) -> int:
        """Runs followed or waiting for a slot."""
        return len(self._followers)

    async def record(
        self, workflow_id: str, snapshot: pb.StatusSnapshot, also: Callable[[Connection], None] | None = None
    ) -> None:
        """Copy a snapshot onto the workflow row (marking it dispatched), with `also` in the
        same transaction, and follow the run until it ends."""
        await self._write(workflow_id, snapshot, also)
        if not snapshot.is_completed:
            self.follow(workflow_id, snapshot.last_sequence)

    async def _write(
        self, workflow_id: str, snapshot: pb.StatusSnapshot, also: Callable[[Connection], None] | None = None
    ) -> None:
        def write(conn: Connection) -> None:
            store.mirror(conn, workflow_id, snapshot)
            if also is not None:
                also(conn)

        await self._db.write(write)
        self._on_change(workflow_id)

    def follow(self, workflow_id: str, after: int) -> None:
        if workflow_id in self._followers:
            return
        task = asyncio.create_task(self._follow(workflow_id, after), name=f"mirror-{workflow_id}")
        self._followers[workflow_id] = task
        task.add_done_callback(lambda _t: self._followers.pop(workflow_id, None))

    async def _follow(self, workflow_id: str, after: int) -> None:
        waited = self._slots.locked()
        async with self._slots:
            if waited:  # a watcher may have recorded more, even the end, meanwhile
                row = await self._db.read(lambda conn: store.get(conn, workflow_id))
                if row is None or statuses.is_terminal(row.status):
                    return
                after = max(after, row.last_sequence)
            await self._stream(workflow_id, after)

    async def _stream(self, workflow_id: str, after: int) -> None:
        attempt = 0
        while True:
            try:
                request = ppb.ProcessorServiceWatchStatusRequest(workflow_id=workflow_id, after_sequence=after)
                async for response in self._stub.WatchStatus(request):
                    attempt = 0
                    if response.HasField("event"):
                        await self._write(workflow_id, response.snapshot)
                        after = response.event.sequence
                        if statuses.is_terminal(response.snapshot.status):
                            return
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    logger.error("the processor has no run for dispatched workflow %s", workflow_id)
                    return
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    logger.error("the processor's log of %s is behind ours; following it from the start", workflow_id)
                    after = 0
                    continue
                attempt += 1
                delay = min(self._max_backoff, 0.05 * 2**attempt) * (0.5 + random.random() / 2)
                logger.warning("following %s failed (%s); retry in %.2fs", workflow_id, exc.code().name, delay)
                await asyncio.sleep(delay)
            except Exception:
                logger.exception("mirror of %s failed", workflow_id)
                await asyncio.sleep(self._max_backoff)

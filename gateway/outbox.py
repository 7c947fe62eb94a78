"""The outbox relay: delivers committed outbox rows to the processor.

Approve commits an outbox row in the same transaction as the decision; the relay is handed
the row right after that commit (no polling delay) and calls `ProcessorService.Enqueue`
(or `CancelRun`), retrying with capped exponential backoff while the processor is down or
slow. While the processor is down, senders share one backoff (the first failure sets when
anyone may try next) and at most `max_in_flight` calls are out at once, so a backlog of
thousands of approvals does not turn into a storm of doomed calls. Only an acknowledged row
is deleted, so a gateway killed at any point delivers the row
after restart (Enqueue and CancelRun are idempotent, so a repeat is harmless). Rows of one
workflow go out in order (enqueue before cancel); different workflows go out concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from auditflow.db import Database
from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import processor_service_pb2_grpc as ppb_grpc
from gateway import store, workflows

logger = logging.getLogger(__name__)

# Codes after which a retry cannot succeed: the processor refused the request itself.
PERMANENT = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED}
)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    workflow_id: str
    kind: str
    payload: bytes
    # The request to send, when the caller already has it (right after Approve's commit);
    # otherwise it is built from the payload and the workflow row, once per delivery.
    request: ppb.EnqueueRequest | ppb.CancelRunRequest | None = None


Dispatched = Callable[[str, ppb.Run], Awaitable[None]]
EventAppended = Callable[[dict[str, Any]], None]


class OutboxRelay:
    """Delivers outbox rows; `submit` after a commit, `start` to pick up what is left over."""

    def __init__(
        self,
        db: Database,
        stub: ppb_grpc.ProcessorServiceAsyncStub,
        on_dispatched: Dispatched,
        on_event: EventAppended,
        *,
        scan_interval: float = 5.0,
        rpc_timeout: float = 5.0,
        max_backoff: float = 5.0,
        max_in_flight: int = 64,
    ) -> None:
        self._db = db
        self._stub = stub
        self._on_dispatched = on_dispatched
        self._on_event = on_event
        self._scan_interval = scan_interval
        self._rpc_timeout = rpc_timeout
        self._max_backoff = max_backoff
        self._queues: dict[str, deque[OutboxRow]] = {}
        self._known: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._scanner: asyncio.Task[None] | None = None
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._failures = 0  # consecutive failed calls, shared by all senders
        self._retry_at = 0.0  # loop time before which nobody calls the processor
        self.delivered = 0

    async def start(self) -> None:
        await self._scan()
        self._scanner = asyncio.create_task(self._scan_forever(), name="outbox-scan")

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._scanner] if self._scanner else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def submit(self, row: OutboxRow) -> None:
        """Deliver a freshly committed row (idempotent: a known row is ignored)."""
        if row.id in self._known:
            return
        self._known.add(row.id)
        queue = self._queues.get(row.workflow_id)
        if queue is not None:  # a sender for this workflow is running: it takes the row in turn
            queue.append(row)
            return
        self._queues[row.workflow_id] = deque([row])
        task = asyncio.create_task(self._drain(row.workflow_id), name=f"outbox-{row.workflow_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._known)

    async def _scan_forever(self) -> None:
        while True:
            await asyncio.sleep(self._scan_interval)
            try:
                await self._scan()
            except Exception:
                logger.exception("outbox scan failed")

    async def _scan(self) -> None:
        known = list(self._known)
        rows = await self._db.read(lambda conn: store.pending_outbox(conn, known))
        for r in rows:
            self.submit(OutboxRow(r.id, r.workflow_id, r.kind, r.payload))

    async def _drain(self, workflow_id: str) -> None:
        queue = self._queues[workflow_id]
        try:
            while queue:
                row = queue[0]
                await self._deliver(row)
                queue.popleft()
                self._known.discard(row.id)
        finally:
            del self._queues[workflow_id]

    async def _deliver(self, row: OutboxRow) -> None:
        loop = asyncio.get_running_loop()
        request = row.request or await self._request(row)
        if request is None:
            logger.error("outbox row %d names unknown workflow %s; dropped", row.id, row.workflow_id)
            await self._db.write(lambda conn: store.delete_outbox(conn, row.id))
            return
        while True:
            if (wait := self._retry_at - loop.time()) > 0:
                await asyncio.sleep(wait)
                continue
            try:
                async with self._in_flight:
                    await self._send(row, request)
                self._failures = 0
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() in PERMANENT:
                    await self._give_up(row, exc)
                    break
                self._back_off(loop.time(), row, exc)
        await self._db.write(lambda conn: store.delete_outbox(conn, row.id))
        self.delivered += 1

    def _back_off(self, now: float, row: OutboxRow, exc: grpc.aio.AioRpcError) -> None:
        if now < self._retry_at:
            return  # another sender already backed off for this outage
        self._failures += 1
        delay = min(self._max_backoff, 0.05 * 2**self._failures) * (0.5 + random.random() / 2)
        self._retry_at = now + delay
        logger.warning(
            "delivering %s of %s failed (%s); %d outbox rows wait; retry in %.2fs",
            row.kind,
            row.workflow_id,
            exc.code().name,
            len(self._known),
            delay,
        )

    async def _request(self, row: OutboxRow) -> ppb.EnqueueRequest | ppb.CancelRunRequest | None:
        if row.kind == store.ENQUEUE:
            return await self._db.read(lambda conn: store.enqueue_request(conn, row.payload))
        return ppb.CancelRunRequest.FromString(row.payload)

    async def _send(self, row: OutboxRow, request: ppb.EnqueueRequest | ppb.CancelRunRequest) -> None:
        if isinstance(request, ppb.EnqueueRequest):
            response = await self._stub.Enqueue(request, timeout=self._rpc_timeout)
            logger.info("dispatched %s to the processor (created=%s)", row.workflow_id, response.created)
            await self._on_dispatched(row.workflow_id, response.run)
        else:
            cancelled = await self._stub.CancelRun(request, timeout=self._rpc_timeout)
            logger.info("delivered cancel of %s to the processor", row.workflow_id)
            await self._on_dispatched(row.workflow_id, cancelled.run)

    async def _give_up(self, row: OutboxRow, exc: grpc.aio.AioRpcError) -> None:
        logger.error("the processor refused %s of %s: %s", row.kind, row.workflow_id, exc.details())
        if row.kind == store.ENQUEUE:
            reason, message = "DISPATCH_REFUSED", f"the processor refused the workflow: {exc.details()}"
            event = await self._db.write(lambda conn: workflows.fail_dispatch(conn, row.workflow_id, reason, message))
            if event is not None:
                self._on_event(event)

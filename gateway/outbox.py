"""The outbox relay: delivers committed outbox rows to the processor.

Approve commits an outbox row in the same transaction as the decision; the relay is handed
the row right after that commit (no polling delay) and calls `ProcessorService.Enqueue`
(or `CancelRun`). When a call fails for want of the processor, the relay closes a gate: every
sender waits on it (costing nothing), and one prober asks the processor's health with capped
exponential backoff until it answers SERVING, then opens the gate. So a backlog of thousands
of approvals during an outage does not turn into a storm of doomed calls; at most
`max_in_flight` calls are out at once. Only an acknowledged row is deleted, so a gateway
killed at any point delivers the row after restart (Enqueue and CancelRun are idempotent, so
a repeat is harmless). Rows of one workflow go out in order (enqueue before cancel);
different workflows go out concurrently.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy import Connection

from auditflow.db import Database
from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import processor_service_pb2_grpc as ppb_grpc
from gateway import store, workflows

logger = logging.getLogger(__name__)

# The processor is unreachable or too slow: every sender waits for it (the gate closes).
OUTAGE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# The processor answered and refused the request itself: a retry cannot succeed. (A cancel of
# a run the processor never accepted is NOT_FOUND for good.) Any other failure is retried for
# that row alone, with backoff, without holding up the others.
REFUSED = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION})
REFUSED_CANCEL = REFUSED | {grpc.StatusCode.NOT_FOUND}


@dataclass(frozen=True)
class OutboxRow:
    id: int
    workflow_id: str
    kind: str
    payload: bytes
    # The request to send, when the caller already has it (right after Approve's commit);
    # otherwise it is built from the payload and the workflow row, once per delivery.
    request: ppb.EnqueueRequest | ppb.CancelRunRequest | None = None


# (workflow id, the processor's run, the write that retires the outbox row): the callee
# records the dispatch and runs that write in the same transaction.
Dispatched = Callable[[str, ppb.Run, Callable[[Connection], None]], Awaitable[None]]
Probe = Callable[[], Awaitable[bool]]
EventAppended = Callable[[dict[str, Any]], None]


class OutboxRelay:
    """Delivers outbox rows; `submit` after a commit, `start` to pick up what is left over."""

    def __init__(
        self,
        db: Database,
        stub: ppb_grpc.ProcessorServiceAsyncStub,
        on_dispatched: Dispatched,
        on_event: EventAppended,
        probe: Probe,
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
        self._probe = probe
        self._scan_interval = scan_interval
        self._rpc_timeout = rpc_timeout
        self._max_backoff = max_backoff
        self._queues: dict[str, deque[OutboxRow]] = {}
        # Rows submitted while the gate is closed: a deque entry each, not a waiting task.
        self._parked: deque[OutboxRow] = deque()
        self._known: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._scanner: asyncio.Task[None] | None = None
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._open = asyncio.Event()  # set while the processor is believed to be up
        self._open.set()
        self._prober: asyncio.Task[None] | None = None
        self.delivered = 0

    async def start(self) -> None:
        await self._scan()
        self._scanner = asyncio.create_task(self._scan_forever(), name="outbox-scan")

    async def stop(self) -> None:
        tasks = [*self._tasks, *(t for t in (self._scanner, self._prober) if t is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def submit(self, row: OutboxRow) -> None:
        """Deliver a freshly committed row (idempotent: a known row is ignored)."""
        if row.id in self._known:
            return
        self._known.add(row.id)
        self._route(row)

    def _route(self, row: OutboxRow) -> None:
        queue = self._queues.get(row.workflow_id)
        if queue is not None:  # a sender for this workflow is running: it takes the row in turn
            queue.append(row)
        elif not self._open.is_set():  # an outage: it waits here until the processor is back
            self._parked.append(row)
        else:
            self._start_sender(row)

    def _start_sender(self, row: OutboxRow) -> None:
        self._queues[row.workflow_id] = deque([row])
        task = asyncio.create_task(self._drain(row.workflow_id), name=f"outbox-{row.workflow_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._known)

    @property
    def outage(self) -> bool:
        """True while the gate is closed: the processor is believed to be down."""
        return not self._open.is_set()

    @property
    def parked(self) -> int:
        """Rows waiting, without a sender task, for the processor to come back."""
        return len(self._parked)

    async def _scan_forever(self) -> None:
        while True:
            await asyncio.sleep(self._scan_interval)
            try:
                await self._scan()
            except Exception:
                logger.exception("outbox scan failed")

    async def _scan(self) -> None:
        """Pick up rows nobody handed us: left by a killed gateway, or by a replica."""
        known = set(self._known)
        rows = await self._db.scan(lambda conn: store.pending_outbox(conn, known))
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
            # If this task ends early (cancelled), forget the rows so that a scan finds them.
            for row in queue:
                self._known.discard(row.id)
            del self._queues[workflow_id]

    async def _deliver(self, row: OutboxRow) -> None:
        """Deliver one row, retrying until the processor accepts or refuses it for good."""
        attempt = 0
        while True:
            try:
                await self._attempt(row)
                return
            except Exception as exc:  # a failure of ours (database) or an unexpected answer
                attempt += 1
                delay = _backoff(attempt, self._max_backoff)
                logger.warning(
                    "delivering %s of %s failed (%s); retry %d in %.2fs",
                    row.kind, row.workflow_id, _describe(exc), attempt, delay,
                    exc_info=not isinstance(exc, grpc.aio.AioRpcError),
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def _attempt(self, row: OutboxRow) -> None:
        request = row.request or await self._request(row)
        if request is None:
            logger.error("outbox row %d names unknown workflow %s; dropped", row.id, row.workflow_id)
        else:
            while True:
                await self._open.wait()
                try:
                    async with self._in_flight:
                        run = await self._send(row, request)
                    # Recording the dispatch and deleting the row share one transaction.
                    await self._on_dispatched(
                        row.workflow_id, run, functools.partial(store.delete_outbox, outbox_id=row.id)
                    )
                    self.delivered += 1
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in (REFUSED_CANCEL if row.kind == store.CANCEL else REFUSED):
                        await self._give_up(row, exc)
                        break
                    if exc.code() not in OUTAGE:
                        raise
                    self._close_gate(row, exc)
        await self._db.write(lambda conn: store.delete_outbox(conn, row.id))
        self.delivered += 1

    def _close_gate(self, row: OutboxRow, exc: grpc.aio.AioRpcError) -> None:
        if not self._open.is_set():
            return  # another sender already noticed this outage
        self._open.clear()
        logger.warning(
            "delivering %s of %s failed (%s); %d outbox rows wait for the processor",
            row.kind,
            row.workflow_id,
            exc.code().name,
            len(self._known),
        )
        self._prober = asyncio.create_task(self._probe_until_up(), name="outbox-probe")

    async def _probe_until_up(self) -> None:
        attempt = 0
        while True:
            attempt += 1
            await asyncio.sleep(_backoff(attempt, self._max_backoff))
            try:
                if await self._probe():
                    break
            except Exception:  # the probe's own failure is the answer "not yet"
                logger.debug("processor probe failed", exc_info=True)
            logger.info("the processor is still unavailable; %d outbox rows wait", len(self._known))
        logger.info("the processor is back; delivering %d outbox rows", len(self._known))
        self._open.set()
        parked, self._parked = self._parked, deque()
        for row in parked:  # in order: a workflow's rows keep theirs
            self._route(row)

    async def _request(self, row: OutboxRow) -> ppb.EnqueueRequest | ppb.CancelRunRequest | None:
        if row.kind == store.ENQUEUE:
            return await self._db.read(lambda conn: store.enqueue_request(conn, row.payload))
        return ppb.CancelRunRequest.FromString(row.payload)

    async def _send(self, row: OutboxRow, request: ppb.EnqueueRequest | ppb.CancelRunRequest) -> ppb.Run:
        if isinstance(request, ppb.EnqueueRequest):
            response = await self._stub.Enqueue(request, timeout=self._rpc_timeout)
            logger.info("dispatched %s to the processor (created=%s)", row.workflow_id, response.created)
            return response.run
        cancelled = await self._stub.CancelRun(request, timeout=self._rpc_timeout)
        logger.info("delivered cancel of %s to the processor", row.workflow_id)
        return cancelled.run

    async def _give_up(self, row: OutboxRow, exc: grpc.aio.AioRpcError) -> None:
        logger.error("the processor refused %s of %s: %s", row.kind, row.workflow_id, exc.details())
        if row.kind == store.ENQUEUE:
            reason, message = "DISPATCH_REFUSED", f"the processor refused the workflow: {exc.details()}"
            event = await self._db.write(lambda conn: workflows.fail_dispatch(conn, row.workflow_id, reason, message))
            if event is not None:
                self._on_event(event)
        else:  # a later CancelWorkflow may try again
            await self._db.write(lambda conn: store.clear_cancel_requested(conn, row.workflow_id))


def _backoff(attempt: int, cap: float) -> float:
    """Capped exponential backoff with jitter: 0.1 s, 0.2 s, 0.4 s … up to `cap`."""
    return float(min(cap, 0.05 * 2**attempt) * (0.5 + random.random() / 2))


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"

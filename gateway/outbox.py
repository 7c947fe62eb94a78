"""The outbox relay: delivers committed outbox rows to the processor.

Approve commits an outbox row in the same transaction as the decision; the relay is handed
the row right after that commit (no polling delay) and calls `ProcessorService.Enqueue`
(or `CancelRun`). This module alone knows what a row's payload says and turns a row into a
request. What became of a row is reported through `Dispatches` (the feed records the
dispatch and retires the row in one transaction).

When a call fails for want of the processor, the relay closes a gate: every sender waits on
it (costing nothing), and one prober asks the processor's health with capped exponential
backoff until it answers SERVING, then opens the gate. So a backlog of thousands of approvals
during an outage does not turn into a storm of doomed calls; at most `max_in_flight` calls
are out at once. While the gate is closed, or the feed from the processor is broken,
`unavailable_since` says since when (Approve and GetStatus tell the caller). Only an
acknowledged row is deleted, so a gateway killed at any point delivers the row after restart
(Enqueue and CancelRun are idempotent, so a repeat is harmless). Rows of one workflow go out
in order (enqueue before cancel); different workflows go out concurrently.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import datetime
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auditflow import convert, metrics, tracing
from auditflow.backoff import Backoff
from auditflow.db import Database
from auditflow.errors import Unavailable
from auditflow.principal import Principal
from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import processor_service_pb2_grpc as ppb_grpc
from gateway import store
from gateway.store import OutboxRow, WorkflowRecord

logger = logging.getLogger(__name__)

PROCESSOR_SERVICE = ppb.DESCRIPTOR.services_by_name["ProcessorService"].full_name
# The processor is unreachable or too slow: every sender waits for it (the gate closes).
OUTAGE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# The processor answered and refused the request itself: a retry cannot succeed. (A cancel of
# a run the processor never accepted is NOT_FOUND for good.) Any other failure is retried for
# that row alone, with backoff, without holding up the others.
REFUSED = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION})
REFUSED_CANCEL = REFUSED | {grpc.StatusCode.NOT_FOUND}
Request = ppb.EnqueueRequest | ppb.CancelRunRequest


# --- the format of a row ----------------------------------------------------------------


def enqueue_payload(
    record: WorkflowRecord, approved_by: str, base_hash: str, approved_at: datetime, traceparent: str = ""
) -> bytes:
    """An Enqueue row keeps what the workflow row does not: the approver, the sequence and
    trail hash the processor goes on from, when it was approved and the approval's trace. The
    rest comes from the workflow when sent."""
    request = ppb.EnqueueRequest(
        workflow_id=record.workflow_id,
        base_sequence=record.last_sequence,
        approved_by=approved_by,
        base_hash=base_hash,
        approved_at=convert.timestamp(approved_at),
        traceparent=traceparent,
    )
    return request.SerializeToString()


def cancel_payload(workflow_id: str, actor: Principal, reason: str) -> bytes:
    request = ppb.CancelRunRequest(
        workflow_id=workflow_id, requested_by=actor.name, reason=reason, requested_by_auth=actor.via
    )
    return request.SerializeToString()


def request_of(row: OutboxRow, workflow: WorkflowRecord | None) -> Request | None:
    """The request a row stands for (an Enqueue needs its workflow; None if it is gone)."""
    if row.kind == store.CANCEL:
        return ppb.CancelRunRequest.FromString(row.payload)
    if workflow is None:
        return None
    request = ppb.EnqueueRequest.FromString(row.payload)
    request.title = workflow.title
    request.plan.extend(convert.plan_from_json(workflow.plan_json))
    request.orchestrator = workflow.orchestrator
    request.max_cycles = workflow.max_cycles
    return request


# --- the relay --------------------------------------------------------------------------


class Dispatches(Protocol):
    """What the relay reports (implemented by `gateway.feed.Feed`)."""

    async def dispatched(self, row: OutboxRow, run: ppb.Run) -> None:
        """The processor accepted the row: record its answer and delete the row, in one
        transaction."""

    async def refused(self, row: OutboxRow, message: str) -> None:
        """The processor refused the row for good: end the workflow (an Enqueue) or forget the
        cancel request (a CancelRun), and delete the row, in one transaction."""


class OutboxRelay:
    """Delivers outbox rows; `submit` after a commit, `start` to pick up what is left over."""

    def __init__(
        self,
        db: Database,
        stub: ppb_grpc.ProcessorServiceAsyncStub,
        health: health_pb2_grpc.HealthAsyncStub,
        dispatches: Dispatches,
        *,
        scan_interval: float = 5.0,
        rpc_timeout: float = 5.0,
        max_backoff: float = 5.0,
        max_in_flight: int = 64,
    ) -> None:
        self._db = db
        self._stub = stub
        self._health = health
        self._dispatches = dispatches
        self._scan_interval = scan_interval
        self._rpc_timeout = rpc_timeout
        self._max_backoff = max_backoff
        self._queues: dict[str, deque[tuple[OutboxRow, WorkflowRecord | None]]] = {}
        # Rows submitted while the gate is closed: a deque entry each, not a waiting task.
        self._parked: deque[tuple[OutboxRow, WorkflowRecord | None]] = deque()
        self._known: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._scanner: asyncio.Task[None] | None = None
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._open = asyncio.Event()  # set while the processor is believed to be up
        self._open.set()
        self._unavailable_since: datetime | None = None
        self._link_down_since: datetime | None = None
        self._prober: asyncio.Task[None] | None = None
        metrics.OUTBOX_GATE_OPEN.set(1)

    async def start(self) -> None:
        await self._scan()
        self._scanner = asyncio.create_task(self._scan_forever(), name="outbox-scan")

    async def stop(self) -> None:
        tasks = [*self._tasks, *(t for t in (self._scanner, self._prober) if t is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def submit(self, row: OutboxRow, workflow: WorkflowRecord | None = None) -> None:
        """Deliver a freshly committed row (`workflow` as of the commit saves reading it);
        idempotent: a known row is ignored."""
        if row.id in self._known:
            return
        self._known.add(row.id)
        self._route(row, workflow)

    @property
    def pending(self) -> int:
        return len(self._known)

    @property
    def unavailable_since(self) -> datetime | None:
        """When the processor was found unavailable, while the gate is closed or the feed from
        it is broken; else None. The feed notices first (its stream ends when the processor
        stops), so the first Approve after that already says its work is queued."""
        return self._unavailable_since or self._link_down_since

    def link_changed(self, up: bool) -> None:
        """The feed from the processor broke (`up` False: every failed attempt says so again)
        or is back."""
        self._link_down_since = None if up else (self._link_down_since or convert.utcnow())

    @property
    def gate_closed(self) -> bool:
        """True while rows wait for an unavailable processor (a send failed; the relay probes
        its health and opens the gate again when it answers)."""
        return not self._open.is_set()

    @property
    def parked(self) -> int:
        """Rows waiting, without a sender task, for the processor to come back."""
        return len(self._parked)

    def _route(self, row: OutboxRow, workflow: WorkflowRecord | None) -> None:
        queue = self._queues.get(row.workflow_id)
        if queue is not None:  # a sender for this workflow is running: it takes the row in turn
            queue.append((row, workflow))
        elif not self._open.is_set():  # an outage: it waits here until the processor is back
            self._parked.append((row, workflow))
        else:
            self._queues[row.workflow_id] = deque([(row, workflow)])
            task = asyncio.create_task(self._drain(row.workflow_id), name=f"outbox-{row.workflow_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _scan_forever(self) -> None:
        while True:
            await asyncio.sleep(self._scan_interval)
            try:
                await self._scan()
            except Unavailable:
                pass  # (the database says so in the log, once per outage; the next scan retries)
            except Exception:
                logger.exception("outbox scan failed")

    async def _scan(self) -> None:
        """Pick up rows nobody handed us: left by a killed gateway, or by a replica."""
        known = set(self._known)
        for row in await self._db.scan(lambda conn: store.pending_outbox(conn, known)):
            self.submit(row)

    async def _drain(self, workflow_id: str) -> None:
        queue = self._queues[workflow_id]
        try:
            while queue:
                row, workflow = queue[0]
                await self._deliver(row, workflow)
                queue.popleft()
                self._known.discard(row.id)
        finally:
            # If this task ends early (cancelled), forget the rows so that a scan finds them.
            for row, _workflow in queue:
                self._known.discard(row.id)
            del self._queues[workflow_id]

    async def _deliver(self, row: OutboxRow, workflow: WorkflowRecord | None) -> None:
        """Deliver one row, retrying until the processor accepts or refuses it for good."""
        backoff = Backoff(maximum=self._max_backoff)
        while True:
            try:
                await self._attempt(row, workflow)
                return
            except Exception as exc:  # a failure of ours (database) or an unexpected answer
                delay = backoff.next()
                logger.warning(
                    "delivering %s of %s failed (%s); retry %d in %.2fs",
                    row.kind,
                    row.workflow_id,
                    _describe(exc),
                    backoff.attempts,
                    delay,
                    exc_info=not isinstance(exc, grpc.aio.AioRpcError),
                )
                await asyncio.sleep(delay)

    async def _attempt(self, row: OutboxRow, workflow: WorkflowRecord | None) -> None:
        if workflow is None and row.kind == store.ENQUEUE:
            workflow = await self._db.read(lambda conn: store.get(conn, row.workflow_id))
        request = request_of(row, workflow)
        if request is None:
            logger.error("outbox row %d names unknown workflow %s; dropped", row.id, row.workflow_id)
            await self._db.write(lambda conn: store.delete_outbox(conn, row.id))
            return
        while True:
            await self._open.wait()
            try:
                async with self._in_flight:
                    run = await self._send(row, request)
                _delivered(row, "accepted")
                await self._dispatches.dispatched(row, run)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (REFUSED_CANCEL if row.kind == store.CANCEL else REFUSED):
                    _delivered(row, "refused")
                    logger.error("the processor refused %s of %s: %s", row.kind, row.workflow_id, exc.details())
                    await self._dispatches.refused(row, exc.details() or exc.code().name)
                    return
                _delivered(row, "failed")
                if exc.code() not in OUTAGE:
                    raise
                self._close_gate(row, exc)

    async def _send(self, row: OutboxRow, request: Request) -> ppb.Run:
        if isinstance(request, ppb.EnqueueRequest):
            # The call continues the approval's trace, however late it is sent (a restart).
            with tracing.span("outbox relay", parent=request.traceparent, attributes={"auditflow.outbox_row": row.id}):
                response = await self._stub.Enqueue(request, timeout=self._rpc_timeout)
            logger.info("dispatched %s to the processor (created=%s)", row.workflow_id, response.created)
            return response.run
        cancelled = await self._stub.CancelRun(request, timeout=self._rpc_timeout)
        logger.info("delivered cancel of %s to the processor", row.workflow_id)
        return cancelled.run

    def _close_gate(self, row: OutboxRow, exc: grpc.aio.AioRpcError) -> None:
        if not self._open.is_set():
            return  # another sender already noticed this outage
        self._open.clear()
        metrics.OUTBOX_GATE_OPEN.set(0)
        self._unavailable_since = convert.utcnow()
        logger.warning(
            "delivering %s of %s failed (%s); %d outbox rows wait for the processor",
            row.kind,
            row.workflow_id,
            exc.code().name,
            len(self._known),
        )
        self._prober = asyncio.create_task(self._probe_until_up(), name="outbox-probe")

    async def _probe_until_up(self) -> None:
        backoff = Backoff(maximum=self._max_backoff)
        while True:
            await asyncio.sleep(backoff.next())
            try:
                if await self._serving():
                    break
            except Exception:  # the probe's own failure is the answer "not yet"
                logger.debug("processor probe failed", exc_info=True)
            logger.info("the processor is still unavailable; %d outbox rows wait", len(self._known))
        logger.info("the processor is back; delivering %d outbox rows", len(self._known))
        self._unavailable_since = None
        self._open.set()
        metrics.OUTBOX_GATE_OPEN.set(1)
        parked, self._parked = self._parked, deque()
        for row, workflow in parked:  # in order: a workflow's rows keep theirs
            self._route(row, workflow)

    async def _serving(self) -> bool:
        request = health_pb2.HealthCheckRequest(service=PROCESSOR_SERVICE)
        response = await self._health.Check(request, timeout=2.0)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def _delivered(row: OutboxRow, result: str) -> None:
    metrics.OUTBOX_DELIVERIES.labels(row.kind, result).inc()
    if result == "accepted" and row.kind == store.ENQUEUE:
        metrics.OUTBOX_DISPATCH_SECONDS.observe((convert.utcnow() - row.created_at).total_seconds())


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"

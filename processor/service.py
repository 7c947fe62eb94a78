"""`auditflow.v1.ProcessorService`: accept, cancel, inspect and watch runs.

Handlers only validate, run one short transaction and answer; the work happens in the
scheduler. Errors are raised as `auditflow.errors` exceptions and mapped to status codes by
the interceptor.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

from sqlalchemy import Connection

from auditflow import convert, plans, principal, statuses, tracing, trail
from auditflow.convert import utcnow
from auditflow.db import Database
from auditflow.errors import FieldViolation, InvalidArgument, NotFound, OutOfRange, Overloaded, Unavailable, invalid
from auditflow.findings_contract import check_page_size
from auditflow.v1 import processor_service_pb2 as ps
from auditflow.v1 import processor_service_pb2_grpc as ps_grpc
from auditflow.v1 import workflow_pb2 as pb
from auditflow.watch import wait_for
from processor import findings_store, messages, orchestrator, store, transitions
from processor.scheduler import Scheduler
from processor.settings import Settings
from processor.store import Appended, RunRecord

logger = logging.getLogger(__name__)

WatchResponse = ps.ProcessorServiceWatchStatusResponse
PAGE = 256
# Events a feed subscriber may fall behind before it is cut (and catches up with ReadEvents).
FEED_BUFFER = 100_000
MAX_CURSORS = 1000
MAX_READ_PAGE = 1000
MAX_AUTH = 300
MAX_BASE_SEQUENCE = 1000


class ProcessorService(ps_grpc.ProcessorServiceServicer):
    """The gRPC handlers; share the database, the event hub and the scheduler."""

    def __init__(
        self,
        db: Database,
        hub: messages.Hub,
        scheduler: Scheduler,
        settings: Settings,
        signer: trail.Signer | None = None,
    ) -> None:
        self._db = db
        self._hub = hub
        self._scheduler = scheduler
        self._settings = settings
        self._signer = signer
        self._closing = asyncio.Event()
        self.open_streams = 0  # WatchStatus and Follow calls being served
        self.event_reads = 0  # ReadEvents calls answered (for tests and benchmarks)

    def close(self) -> None:
        """End open WatchStatus streams with UNAVAILABLE so clients reconnect elsewhere."""
        self._closing.set()

    async def Enqueue(self, request: ps.EnqueueRequest, context: Any) -> ps.EnqueueResponse:
        wid = plans.check_workflow_id(request.workflow_id)
        # Idempotent first: a retried Enqueue returns the run it created, even if validating
        # the plan would now answer differently (a ledger file moved since). So a refusal
        # looks for the run before it is raised; an accepted request finds it in the insert.
        # (Procedures may check files: blocking, so the validation runs on a thread.)
        refusal = await _refusal(request)
        if refusal is not None:
            existing = await self._db.read(functools.partial(store.get_run, workflow_id=wid))
            if existing is None:
                raise refusal
            logger.info("%s: enqueued again; returning the existing run", wid)
            return ps.EnqueueResponse(run=messages.run(existing), created=False)
        approved_by = request.approved_by
        insert = functools.partial(
            store.insert_run,
            workflow_id=wid,
            title=request.title,
            plan=json.loads(convert.plan_to_json(request.plan)),
            orchestrator=request.orchestrator or orchestrator.DEFAULT,
            max_cycles=request.max_cycles or self._settings.max_cycles,
            base_sequence=request.base_sequence,
            base_hash=request.base_hash or None,
            queued_message=f"queued for processing (approved by {approved_by})",
            approved_at=request.approved_at.ToDatetime(tzinfo=UTC) if request.HasField("approved_at") else None,
            # The run's spans continue this call's trace (the approval's, through the gateway).
            trace_context=tracing.traceparent() or request.traceparent or None,
        )
        inserted = await self._scheduler.admit(lambda conn: insert(conn, now=utcnow()))
        if not inserted.created:  # (a new run's "enqueued" is logged by the scheduler, before its start)
            logger.info("%s: enqueued again; returning the existing run", wid)
        return ps.EnqueueResponse(run=messages.run(inserted.run), created=inserted.created)

    async def CancelRun(self, request: ps.CancelRunRequest, context: Any) -> ps.CancelRunResponse:
        wid = plans.check_workflow_id(request.workflow_id)
        by = _check_principal_name(request.requested_by, "requested_by")
        by_auth = plans.check_text(request.requested_by_auth, "requested_by_auth", MAX_AUTH)
        reason = plans.check_text(request.reason, "reason", plans.MAX_COMMENT)

        def tx(conn: Connection) -> Appended:
            run = store.lock_run(conn, wid)
            if run is None:
                raise _not_found(wid)  # before any write, as auditflow.db requires
            events, changes = transitions.cancel_requested(run, by, reason, by_auth)
            if not events:
                return Appended(run, [])
            return store.append(conn, run, events, changes, utcnow(), self._signer)

        # Off the single writer: the run may be locked by another processor's transaction (a
        # stalled one), and waiting for that lock must never hold up this processor's own runs.
        done = await self._db.write_apart(tx)
        if done.events:
            messages.publish(self._hub, done.events)
            self._scheduler.notify_cancel(wid)
            logger.info("%s: %s", wid, done.events[-1].message)
        return ps.CancelRunResponse(run=messages.run(done.run))

    async def GetRun(self, request: ps.GetRunRequest, context: Any) -> ps.GetRunResponse:
        return ps.GetRunResponse(run=messages.run(await self._get(request.workflow_id)))

    async def WatchStatus(
        self, request: ps.ProcessorServiceWatchStatusRequest, context: Any
    ) -> AsyncIterator[WatchResponse]:
        wid = plans.check_workflow_id(request.workflow_id)
        # Events after the cursor in the hub's cache (a run being driven) prove the run and
        # the cursor valid; otherwise the log decides.
        if not self._hub.cached_after(wid, request.after_sequence):
            run = await self._get(wid)
            if request.after_sequence > run.last_sequence:
                raise OutOfRange(
                    f"after_sequence {request.after_sequence} is past the last event ({run.last_sequence})",
                    violations=[FieldViolation("after_sequence", f"at most {run.last_sequence}")],
                )
            if statuses.is_terminal(run.status) and request.after_sequence == run.last_sequence:
                return  # the client has seen the end already
        self._hub.subscribe(wid)
        self.open_streams += 1
        try:
            async for message in self._follow(wid, request.after_sequence):
                yield message
        finally:
            self.open_streams -= 1
            self._hub.unsubscribe(wid)

    async def Follow(self, request: ps.FollowRequest, context: Any) -> AsyncIterator[ps.FollowResponse]:
        """Every event published here, live; see the contract in processor_service.proto."""
        feed = self._hub.follow(FEED_BUFFER)
        self.open_streams += 1
        try:
            yield ps.FollowResponse(heartbeat=pb.Heartbeat(time=convert.timestamp(utcnow())))  # subscribed
            while True:
                if self._closing.is_set():
                    raise Unavailable("the processor is shutting down; follow another one or reconnect")
                if not await wait_for(feed.changed, self._settings.heartbeat_interval):
                    yield ps.FollowResponse(heartbeat=pb.Heartbeat(time=convert.timestamp(utcnow())))
                    continue
                items = feed.take()
                if feed.overflowed:
                    raise Overloaded(
                        f"this subscriber fell more than {FEED_BUFFER} events behind; catch up with ReadEvents"
                    )
                for _workflow_id, _sequence, message in items:
                    yield ps.FollowResponse(event=ps.FeedEvent(event=message.event, snapshot=message.snapshot))
        finally:
            self.open_streams -= 1
            self._hub.unfollow(feed)

    async def ReadEvents(self, request: ps.ReadEventsRequest, context: Any) -> ps.ReadEventsResponse:
        if len(request.cursors) > MAX_CURSORS:
            raise invalid("cursors", f"at most {MAX_CURSORS} per call, got {len(request.cursors)}")
        if not 0 <= request.page_size <= MAX_READ_PAGE:
            raise invalid("page_size", f"must be between 0 (default {MAX_READ_PAGE}) and {MAX_READ_PAGE}")
        cursors = []
        for index, cursor in enumerate(request.cursors):
            plans.check_workflow_id(cursor.workflow_id, f"cursors[{index}].workflow_id")
            if cursor.after_sequence < 0:
                raise invalid(f"cursors[{index}].after_sequence", "must not be negative")
            cursors.append((cursor.workflow_id, cursor.after_sequence))
        limit = request.page_size or MAX_READ_PAGE
        records, truncated = await self._db.scan(
            functools.partial(store.events_after_cursors, cursors=cursors, limit=limit)
        )
        events = [ps.FeedEvent(event=messages.event(r), snapshot=messages.event_snapshot(r)) for r in records]
        self.event_reads += 1
        return ps.ReadEventsResponse(events=events, truncated=truncated)

    async def ListFindings(
        self, request: ps.ProcessorServiceListFindingsRequest, context: Any
    ) -> ps.ProcessorServiceListFindingsResponse:
        wid = plans.check_workflow_id(request.workflow_id)
        query = findings_store.Query.of(wid, request.filter)
        size = check_page_size(request.page_size)
        after = findings_store.cursor_of(query, request.page_token) if request.page_token else None
        await self._get(wid)  # NOT_FOUND for a run that does not exist
        records, total = await self._db.scan(lambda conn: findings_store.page(conn, query, after, size + 1))
        kept, more = findings_store.fitting(records, size)
        token = ""
        if more:
            last = findings_store.Cursor(findings_store.key_of(query.order, kept[-1].record), total)
            token = findings_store.token(query, last)
        return ps.ProcessorServiceListFindingsResponse(
            findings=[k.message for k in kept], next_page_token=token, total=total
        )

    async def _get(self, workflow_id: str) -> RunRecord:
        wid = plans.check_workflow_id(workflow_id)
        run = await self._db.read(functools.partial(store.get_run, workflow_id=wid))
        if run is None:
            raise _not_found(wid)
        return run

    async def _follow(self, wid: str, after: int) -> AsyncIterator[WatchResponse]:
        """Every event after `after`, in order, then live ones, until the terminal event.

        The log is the source: the hub only wakes us and saves reads when its cache covers
        what we have not sent. We read a page at a time, so a slow watcher costs nothing but
        its position. Every event reaches the hub: this processor's own at its commit, other
        processors' (on a shared PostgreSQL) through the tail (processor/tail.py); a gap in
        the cache sends us to the log.
        """
        settings = self._settings
        idle_since = time.monotonic()
        while True:
            if self._closing.is_set():
                raise Unavailable("the processor is shutting down; reconnect with after_sequence")
            cached = self._hub.cached_after(wid, after)
            batch = await self._read_events(wid, after) if cached is None else cached
            for message in batch:
                yield message
                after = message.event.sequence
                if message.snapshot.is_completed:
                    return
            if batch:
                idle_since = time.monotonic()
                continue
            idle = time.monotonic() - idle_since
            if idle >= settings.heartbeat_interval:
                run = await self._db.read(functools.partial(store.get_run, workflow_id=wid))
                if run is None:  # pragma: no cover - runs are never deleted while watched
                    raise _not_found(wid)
                yield messages.watch_heartbeat(run, utcnow())
                idle_since, idle = time.monotonic(), 0.0
            await self._hub.wait(wid, after, max(settings.heartbeat_interval - idle, 0.001))

    async def _read_events(self, wid: str, after: int) -> list[WatchResponse]:
        read = functools.partial(store.events_after, workflow_id=wid, after=after, limit=PAGE)
        return [messages.watch_event(record) for record in await self._db.read(read)]


async def _refusal(request: ps.EnqueueRequest) -> InvalidArgument | None:
    """The reason to refuse an Enqueue, if any (returned, not raised, so that an existing run
    can still be returned)."""
    try:
        _check_principal_name(request.approved_by, "approved_by")
        if not 1 <= request.base_sequence <= MAX_BASE_SEQUENCE:
            # The gateway's log before dispatch: created, approvals, no more than a few events.
            raise invalid("base_sequence", f"must be between 1 and {MAX_BASE_SEQUENCE}: the gateway's last sequence")
        if request.base_hash and not _is_hash(request.base_hash):
            raise invalid("base_hash", "the hash of the gateway's last event: 64 lowercase hex digits")
        await asyncio.to_thread(plans.check_plan, request.title, request.plan, request.max_cycles, request.orchestrator)
    except InvalidArgument as exc:
        return exc
    return None


def _is_hash(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _check_principal_name(name: str, field: str) -> str:
    problem = principal.check_name(name)
    if problem:
        raise invalid(field, f"the gateway's authenticated principal: {problem}")
    return name


def _not_found(workflow_id: str) -> NotFound:
    return NotFound(f"no run for workflow {workflow_id}", metadata={"workflow_id": workflow_id})

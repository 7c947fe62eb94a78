"""`auditflow.v1.ProcessorService`, the gRPC adapter: accept, cancel, inspect and watch runs.

Each handler checks its request message, hands the call to the application layer
(`processor/runs.py`) and builds the answer. Errors are raised as `auditflow.errors`
exceptions and mapped to status codes by the interceptor.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from auditflow import convert, plans, principal, tracing
from auditflow.convert import utcnow
from auditflow.errors import InvalidArgument, invalid
from auditflow.findings_contract import check_page_size
from auditflow.v1 import processor_service_pb2 as ps
from auditflow.v1 import processor_service_pb2_grpc as ps_grpc
from auditflow.v1 import workflow_pb2 as pb
from processor import findings_store, messages, orchestrator
from processor.messages import WatchResponse
from processor.runs import NewRun, Runs
from processor.settings import Settings
from processor.store import EventCursor

MAX_CURSORS = 1000
MAX_READ_PAGE = 1000
MAX_AUTH = 300
MAX_BASE_SEQUENCE = 1000


class ProcessorService(ps_grpc.ProcessorServiceServicer):
    """The gRPC handlers, over the application layer."""

    def __init__(self, runs: Runs, settings: Settings) -> None:
        self._runs = runs
        self._settings = settings
        self.open_streams = 0  # WatchStatus and Follow calls being served
        self.event_reads = 0  # ReadEvents calls answered (for tests and benchmarks)

    def close(self) -> None:
        """End open WatchStatus and Follow streams with UNAVAILABLE so clients reconnect elsewhere."""
        self._runs.close()

    async def Enqueue(self, request: ps.EnqueueRequest, context: Any) -> ps.EnqueueResponse:
        wid = plans.check_workflow_id(request.workflow_id)
        # (Procedures may check files: blocking, so the validation runs on a thread.)
        refusal = await _refusal(request)
        new = NewRun(
            workflow_id=wid,
            title=request.title,
            plan=json.loads(convert.plan_to_json(request.plan)),
            orchestrator=request.orchestrator or orchestrator.DEFAULT,
            max_cycles=request.max_cycles or self._settings.max_cycles,
            base_sequence=request.base_sequence,
            base_hash=request.base_hash or None,
            approved_by=request.approved_by,
            approved_at=_approved_at(request),
            # The run's spans continue this call's trace (the approval's, through the gateway).
            trace_context=tracing.traceparent() or request.traceparent or None,
        )
        inserted = await self._runs.enqueue(new, refusal)
        return ps.EnqueueResponse(run=messages.run(inserted.run), created=inserted.created)

    async def CancelRun(self, request: ps.CancelRunRequest, context: Any) -> ps.CancelRunResponse:
        wid = plans.check_workflow_id(request.workflow_id)
        by = _check_principal_name(request.requested_by, "requested_by")
        by_auth = plans.check_text(request.requested_by_auth, "requested_by_auth", MAX_AUTH)
        reason = plans.check_text(request.reason, "reason", plans.MAX_COMMENT)
        return ps.CancelRunResponse(run=messages.run(await self._runs.cancel(wid, by, by_auth, reason)))

    async def GetRun(self, request: ps.GetRunRequest, context: Any) -> ps.GetRunResponse:
        wid = plans.check_workflow_id(request.workflow_id)
        return ps.GetRunResponse(run=messages.run(await self._runs.get(wid)))

    async def WatchStatus(
        self, request: ps.ProcessorServiceWatchStatusRequest, context: Any
    ) -> AsyncIterator[WatchResponse]:
        wid = plans.check_workflow_id(request.workflow_id)
        self.open_streams += 1
        try:
            async for message in self._runs.watch(wid, request.after_sequence):
                yield message
        finally:
            self.open_streams -= 1

    async def Follow(self, request: ps.FollowRequest, context: Any) -> AsyncIterator[ps.FollowResponse]:
        """Every event published here, live; see the contract in processor_service.proto."""
        self.open_streams += 1
        try:
            async for published in self._runs.follow():
                if published is None:
                    yield ps.FollowResponse(heartbeat=pb.Heartbeat(time=convert.timestamp(utcnow())))
                    continue
                last = len(published) - 1
                for index, message in enumerate(published):
                    event = ps.FeedEvent(event=message.event, snapshot=message.snapshot)
                    yield ps.FollowResponse(event=event, more=index < last)
        finally:
            self.open_streams -= 1

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
            cursors.append(EventCursor(cursor.workflow_id, cursor.after_sequence))
        records, truncated = await self._runs.read_events(cursors, request.page_size or MAX_READ_PAGE)
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
        page = await self._runs.findings(query, after, size)
        return ps.ProcessorServiceListFindingsResponse(
            findings=[listed.message for listed in page.listed], next_page_token=page.next_token, total=page.total
        )


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


def _approved_at(request: ps.EnqueueRequest) -> datetime | None:
    """When the approval was committed; INVALID_ARGUMENT for a time no calendar holds."""
    if not request.HasField("approved_at"):
        return None
    try:
        return request.approved_at.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise invalid("approved_at", "a time between the years 1 and 9999") from exc

"""WatchStatus on the gateway: one gap-free stream per workflow through both services.

First the gateway's own events (created, approved …) after `after_sequence`, from its log;
once the workflow is dispatched, the processor's events, relayed from its WatchStatus with
the last sequence sent, so one sequence runs through both. If the processor is unreachable
the stream stays open with heartbeats and reconnects from the last sequence it sent. The
terminal event is copied to the workflow row before it is sent, so a client that saw a run
end and then calls GetWorkflow never sees it still running.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
from sqlalchemy import Row

from auditflow import convert, plans, statuses
from auditflow.db import Database
from auditflow.errors import FieldViolation, NotFound, OutOfRange
from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import processor_service_pb2_grpc as ppb_grpc
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.watch import EventHub, wait_for
from gateway import store
from gateway.mirror import Mirror

logger = logging.getLogger(__name__)


class Watcher:
    """Serves WatchStatus streams; `hub` is woken by every gateway event and mirror update."""

    def __init__(
        self,
        db: Database,
        stub: ppb_grpc.ProcessorServiceAsyncStub,
        hub: EventHub[dict[str, Any]],
        mirror: Mirror,
        *,
        heartbeat_interval: float = 5.0,
        max_backoff: float = 2.0,
    ) -> None:
        self._db = db
        self._stub = stub
        self._hub = hub
        self._mirror = mirror
        self._heartbeat = heartbeat_interval
        self._max_backoff = max_backoff

    async def watch(self, workflow_id: str, after: int) -> AsyncIterator[wpb.WatchStatusResponse]:
        plans.check_workflow_id(workflow_id)
        row = await self._db.read(lambda conn: store.get(conn, workflow_id))
        if row is None:
            raise NotFound(f"no workflow {workflow_id}", metadata={"workflow_id": workflow_id})
        if not row.dispatched:  # (once dispatched, the processor's log is the judge)
            if after > row.last_sequence:
                raise _out_of_range(after, row.last_sequence)
            if statuses.is_terminal(row.status) and after == row.last_sequence:
                return  # the client has seen the end already
        self._hub.subscribe(workflow_id)
        try:
            cursor = after
            async for response in self._own_events(workflow_id, cursor):
                cursor = response.event.sequence if response.HasField("event") else cursor
                yield response
                if response.HasField("event") and statuses.is_terminal(response.event.status):
                    return
            async for response in self._relay(workflow_id, cursor):
                yield response
        finally:
            self._hub.unsubscribe(workflow_id)

    async def _own_events(self, workflow_id: str, after: int) -> AsyncIterator[wpb.WatchStatusResponse]:
        """The gateway's events, until the workflow ends here or is approved (what follows
        comes from the processor). They are few, so they are read from the log, not cached."""
        while True:
            changed = self._hub.waiter(workflow_id)
            row, logged = await self._read(workflow_id, after)
            for event in logged:
                after = event["sequence"]
                yield wpb.WatchStatusResponse(event=store.event_message(event), snapshot=_event_snapshot(row, event))
                if statuses.is_terminal(event["status"]):
                    return
            if row.dispatched or (row.status == pb.WORKFLOW_STATUS_APPROVED and after >= row.last_sequence):
                return
            if not await wait_for(changed, self._heartbeat):
                yield _heartbeat(store.snapshot_of(row))

    async def _until_dispatched(
        self, workflow_id: str, after: int, not_found: int
    ) -> AsyncIterator[wpb.WatchStatusResponse]:
        """Heartbeats until the relay's Enqueue is acknowledged (it wakes the hub), or the
        gateway's own events if the processor refused the workflow. `not_found` counts the
        processor's NOT_FOUND answers in a row."""
        changed = self._hub.waiter(workflow_id)
        row, logged = await self._read(workflow_id, after)
        for event in logged:
            yield wpb.WatchStatusResponse(event=store.event_message(event), snapshot=_event_snapshot(row, event))
        if logged:
            return
        if row.dispatched:
            if not_found == 1:
                return  # dispatched between the processor's answer and our read: ask again
            # The processor accepted the run, yet has no record of it now: do not spin.
            logger.error("the processor lost dispatched workflow %s; retrying", workflow_id)
            yield _heartbeat(store.snapshot_of(row))
            await asyncio.sleep(self._max_backoff)
        elif not await wait_for(changed, self._heartbeat):
            yield _heartbeat(store.snapshot_of(row))

    async def _read(self, workflow_id: str, after: int) -> tuple[Row[Any], list[dict[str, Any]]]:
        return await self._db.read(lambda conn: _row_and_events(conn, workflow_id, after))

    async def _relay(self, workflow_id: str, after: int) -> AsyncIterator[wpb.WatchStatusResponse]:
        """The processor's events after `after`, reconnecting until the terminal one."""
        attempt = 0
        not_found = 0  # NOT_FOUND answers in a row
        # Just approved: the relay's Enqueue is on its way. Asking the processor now would
        # only cost it a NOT_FOUND while it takes the Enqueue: wait for the dispatch first.
        async for own in self._until_dispatched(workflow_id, after, not_found=1):
            yield own
            if own.HasField("event") and statuses.is_terminal(own.event.status):
                return
        while True:
            request = ppb.ProcessorServiceWatchStatusRequest(workflow_id=workflow_id, after_sequence=after)
            try:
                async for response in self._stub.WatchStatus(request):
                    attempt = not_found = 0
                    if response.HasField("event"):
                        if response.event.sequence <= after:
                            continue
                        after = response.event.sequence
                        terminal = statuses.is_terminal(response.event.status)
                        if terminal:
                            await self._mirror.record(workflow_id, response.snapshot)
                        yield wpb.WatchStatusResponse(event=response.event, snapshot=response.snapshot)
                        if terminal:
                            return
                    else:
                        yield wpb.WatchStatusResponse(heartbeat=response.heartbeat, snapshot=response.snapshot)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    raise OutOfRange(exc.details() or "after_sequence is past the last event") from exc
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    # Approved, not yet enqueued: wait for the relay's dispatch (or a refusal).
                    not_found += 1
                    async for own in self._until_dispatched(workflow_id, after, not_found):
                        yield own
                        if own.HasField("event") and statuses.is_terminal(own.event.status):
                            return
                    continue
                attempt += 1
                delay = min(self._max_backoff, 0.05 * 2**attempt) * (0.5 + random.random() / 2)
                logger.warning("relaying %s from the processor failed (%s); retry", workflow_id, exc.code().name)
                row = await self._db.read(lambda conn: store.get(conn, workflow_id))
                if row is not None:
                    yield _heartbeat(store.snapshot_of(row))
                await asyncio.sleep(delay)


def _out_of_range(after: int, last: int) -> OutOfRange:
    return OutOfRange(
        f"after_sequence {after} is past the last event ({last})",
        violations=[FieldViolation("after_sequence", f"at most {last}")],
    )


def _row_and_events(conn: Any, workflow_id: str, after: int) -> tuple[Row[Any], list[dict[str, Any]]]:
    row = store.get(conn, workflow_id)
    assert row is not None
    return row, [dict(e._mapping) for e in store.events_after(conn, workflow_id, after)]


def _event_snapshot(row: Row[Any], event: dict[str, Any]) -> pb.StatusSnapshot:
    return convert.snapshot(
        workflow_id=row.workflow_id,
        status=event["status"],
        cycle=0,
        max_cycles=row.max_cycles,
        progress_done=0,
        progress_total=row.progress_total,
        last_message=event["message"],
        error_reason=row.error_reason if event["status"] == pb.WORKFLOW_STATUS_FAILED else None,
        error_message=row.error_message if event["status"] == pb.WORKFLOW_STATUS_FAILED else None,
        result=None,
        updated_at=event["time"],
        last_sequence=event["sequence"],
    )


def _heartbeat(snapshot: pb.StatusSnapshot) -> wpb.WatchStatusResponse:
    return wpb.WatchStatusResponse(heartbeat=pb.Heartbeat(time=convert.timestamp(convert.utcnow())), snapshot=snapshot)

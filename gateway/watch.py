"""WatchStatus on the gateway: one gap-free stream per watcher, served from memory.

One sequence runs through both services: the gateway's own events (created, approved …),
then the processor's. Both reach the hub (`gateway.hub`) once, whatever the number of
watchers: the gateway's at their commit, the processor's through the feed (`gateway.feed`),
which writes each to the workflow row before publishing it (so a client that saw a run end
never reads it as running). A watcher keeps only its position: it sends what the hub holds
after it, then waits for the next publish, with heartbeats while nothing happens. A watch of
a workflow whose newest event the hub holds starts without reading the database either.

When the hub does not hold what a watcher needs (it joined late, after a restart, or fell
far behind), the log is filled from the sources: the gateway's events from its database, the
processor's with one ReadEvents (paged) — once, for every watcher that needs it at the same
time. A log longer than the hub keeps is read page by page for that watcher alone. A slow
watcher therefore never holds anyone up and is never cut: it catches up from the sources.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import Connection

from auditflow import convert, metrics, plans, statuses
from auditflow.db import Database
from auditflow.errors import FieldViolation, NotFound, OutOfRange, invalid
from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import processor_service_pb2_grpc as ppb_grpc
from auditflow.v1 import workflow_pb2 as pb
from gateway import messages, store
from gateway.encoded import Joined
from gateway.hub import Item, WorkflowHub
from gateway.store import EventRecord, WorkflowRecord
from gateway.upstream import processor_call

PAGE = 1000


class ProcessorLink(Protocol):
    """Whether approved work waits for an unavailable processor (the relay knows)."""

    @property
    def unavailable_since(self) -> datetime | None: ...


class Watcher:
    """Serves WatchStatus streams from the hub."""

    def __init__(
        self,
        db: Database,
        stub: ppb_grpc.ProcessorServiceAsyncStub,
        hub: WorkflowHub,
        link: ProcessorLink,
        *,
        heartbeat_interval: float = 5.0,
    ) -> None:
        self._db = db
        self._stub = stub
        self._hub = hub
        self._link = link
        self._heartbeat = heartbeat_interval

    async def watch(self, workflow_id: str, after: int) -> AsyncIterator[Item]:
        """The workflow's items after `after`, to its end, one by one (gRPC sends one message
        per item). No layers of generators: a thousand watchers each run this for every event."""
        opened = await self._start(workflow_id, after)
        if opened is None:
            return  # the client has seen the end already
        with self._watching(workflow_id):
            while True:
                for item in await self._next(workflow_id, after, opened.record):
                    yield item
                    if item.terminal:
                        return
                    after = item.sequence or after  # (a heartbeat has none)

    async def watch_joined(self, workflow_id: str, after: int) -> AsyncIterator[Item | Joined]:
        """The same items, those ready at once joined into one write (SSE, NDJSON)."""
        opened = await self._start(workflow_id, after)
        if opened is None:
            return
        with self._watching(workflow_id):
            while True:
                items = await self._next(workflow_id, after, opened.record)
                yield items[0] if len(items) == 1 else Joined(items)
                if items[-1].terminal:  # (the log's last: nothing follows it)
                    return
                after = items[-1].sequence or after

    @contextlib.contextmanager
    def _watching(self, workflow_id: str) -> Iterator[None]:
        self._hub.subscribe(workflow_id)
        metrics.WATCH_STREAMS.inc()
        try:
            yield
        finally:
            metrics.WATCH_STREAMS.dec()
            self._hub.unsubscribe(workflow_id)

    async def _next(self, workflow_id: str, after: int, record: WorkflowRecord | None) -> list[Item]:
        """What to send after `after`: what the log holds (filled if need be), else, once the
        workflow has been idle for the heartbeat's interval, a heartbeat. Never empty."""
        while True:
            changed = self._hub.waiter(workflow_id)
            items = self._hub.after(workflow_id, after)
            if items is None:
                await self._hub.fill(workflow_id, lambda: self._read(workflow_id, 0))
                items = self._hub.after(workflow_id, after)
            if items is None:  # longer than the hub keeps: this watcher reads its own pages
                read, mirrored = await self._read(workflow_id, after)
                items = [item for item in read if item.sequence <= mirrored][:PAGE]
            if items:
                return items
            beats = self._hub.beat_after(workflow_id, self._heartbeat)
            await changed.wait()
            if self._hub.beats(workflow_id) != beats:  # idle for a heartbeat's interval
                return [await self._heartbeat_item(workflow_id, record)]

    async def _start(self, workflow_id: str, after: int) -> _Opened | None:
        """Check the request against the workflow; None when the client has seen its end.

        From the hub alone when it holds the workflow's newest event and the request is within
        it: a watch of a workflow that runs or is watched reads nothing (a thousand clients
        reconnecting at once read nothing). Otherwise from its row: the hub has not heard of
        it (or holds only its position), or the request is past what the hub has published,
        which a client may have read from the row between an event's commit and its publish."""
        if after < 0:
            raise invalid("after_sequence", "must not be negative")
        plans.check_workflow_id(workflow_id)
        known = self._hub.position(workflow_id)
        if known is not None and after <= known[0]:
            last, ended = known
            return None if ended and after == last else _Opened(None)
        record = await self._db.read(lambda conn: store.get(conn, workflow_id))
        if record is None:
            raise NotFound(f"no workflow {workflow_id}", metadata={"workflow_id": workflow_id})
        last = max(record.last_sequence, self._hub.published(workflow_id))
        if after > last:
            raise OutOfRange(
                f"after_sequence {after} is past the last event ({last})",
                violations=[FieldViolation("after_sequence", f"at most {last}")],
            )
        if statuses.is_terminal(record.status) and after == record.last_sequence:
            return None
        return _Opened(record)

    async def _heartbeat_item(self, workflow_id: str, record: WorkflowRecord | None) -> Item:
        """The newest snapshot (the hub's, else the row's), saying so while approved work
        waits for the processor."""
        latest = self._hub.latest(workflow_id)
        if latest is None:
            if record is None:  # (the hub held its newest event at the start: not expected)
                record = await self._db.read(lambda conn: _record(conn, workflow_id))
            latest = messages.snapshot(record)
        snapshot = pb.StatusSnapshot()
        snapshot.CopyFrom(latest)
        since = self._link.unavailable_since
        if since is not None and snapshot.status == pb.WORKFLOW_STATUS_APPROVED:
            snapshot.processor_unavailable_since.FromDatetime(since)
            snapshot.last_message = messages.waiting_message(since)
        return Item.heartbeat(snapshot, pb.Heartbeat(time=convert.timestamp(convert.utcnow())))

    async def _read(self, workflow_id: str, after: int) -> tuple[list[Item], int]:
        """The workflow's log after `after` from the sources: the gateway's events from its
        database, then the processor's (if it was dispatched), oldest first; and how far its
        row was mirrored when read (watchers are sent nothing past that: a client that saw an
        event never reads the row as before it)."""
        record, own = await self._db.read(lambda conn: _record_and_events(conn, workflow_id, after))
        items = [Item(messages.event_message(record, e)) for e in own]
        if not record.dispatched:
            return items, record.last_sequence
        base = own[-1].sequence if own else after  # the processor numbers on from the gateway's last
        while True:
            request = ppb.ReadEventsRequest(cursors=[ppb.FeedCursor(workflow_id=workflow_id, after_sequence=base)])
            with processor_call(f"events of {workflow_id}"):
                page = await self._stub.ReadEvents(request, timeout=10)
            items.extend(Item.event(e.event, e.snapshot) for e in page.events)
            if not page.truncated or not page.events:
                return items, record.last_sequence
            base = page.events[-1].event.sequence


@dataclass(frozen=True, slots=True)
class _Opened:
    """A watch that goes on; the workflow's row if its start read it (else the hub holds its
    newest event, whose snapshot the heartbeats send)."""

    record: WorkflowRecord | None


def _record(conn: Connection, workflow_id: str) -> WorkflowRecord:
    record = store.get(conn, workflow_id)
    if record is None:  # pragma: no cover - workflows are never deleted
        raise NotFound(f"no workflow {workflow_id}")
    return record


def _record_and_events(conn: Connection, workflow_id: str, after: int) -> tuple[WorkflowRecord, list[EventRecord]]:
    return _record(conn, workflow_id), store.events_after(conn, workflow_id, after)

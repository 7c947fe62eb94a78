"""The feed: how the gateway follows the processor, one stream for everything.

The gateway opens one `ProcessorService.Follow` stream, whatever the number of its watchers
and runs. Each processor event crosses the link once, is written to the workflow's row once
(the mirror that Get and List read: current for every run, however many are active), and is
then published to the hub once, from which every local watcher reads it (`gateway.watch`).
Writes are batched: what arrived while the previous batch was being written goes into the
next transaction, one row update per workflow, and is published as one batch: a workflow's
watchers wake once for the events committed together (on SSE and NDJSON: one write).

Gap-free, also across broken links: the stream's first message says the subscription is in
place; the feed then reads, with ReadEvents, every approved unfinished workflow's log after
the position its row holds (dispatched or not: the processor may have accepted one whose
dispatch the gateway has not recorded yet), so nothing committed before the subscription is
missed, and what is committed after it is on the stream (a sequence already published is
skipped). An event whose
predecessor never arrived (another processor wrote it, and this one's tail has not caught up)
has its gap read from the log before it is applied; a gap before the run's first event (a
decision another gateway committed) is read from the database. A broken stream is reopened with backoff
and the catch-up runs again.

It is also where the relay reports (`gateway.outbox.Dispatches`): an accepted row's answer is
mirrored and the row deleted in one transaction; a refused Enqueue fails the workflow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

import grpc
from sqlalchemy import Connection

from auditflow import trail
from auditflow.background import Background
from auditflow.backoff import Backoff
from auditflow.db import Database
from auditflow.errors import Unavailable
from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import processor_service_pb2_grpc as ppb_grpc
from auditflow.v1 import workflow_pb2 as pb
from gateway import messages, store, workflows
from gateway.hub import Item, WorkflowHub
from gateway.store import OutboxRow

logger = logging.getLogger(__name__)

MAX_CURSORS = 1000  # per ReadEvents call (the processor's limit)


class LinkObserver(Protocol):
    """Told when the feed's stream from the processor is up (subscribed and caught up) and
    when it breaks: the gateway's health reports the link (`serving.LinkHealth`)."""

    def link_changed(self, up: bool) -> None: ...


class Feed:
    """Follows the processor's events into the workflow rows and the hub."""

    def __init__(
        self,
        db: Database,
        stub: ppb_grpc.ProcessorServiceAsyncStub,
        hub: WorkflowHub,
        *,
        max_backoff: float = 2.0,
        signer: trail.Signer | None = None,
        link: LinkObserver | None = None,
    ) -> None:
        self._db = db
        self._link = link
        self._stub = stub
        self._hub = hub
        self._max_backoff = max_backoff
        self._signer = signer
        self._task = Background("feed")
        self.connected = asyncio.Event()  # set while the stream is open and caught up

    async def start(self) -> None:
        self._task.start(self._run)

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        backoff = Backoff(maximum=self._max_backoff)
        failing = False
        while True:
            try:
                await self._session(backoff)
                problem = "the processor ended the feed"
            except grpc.aio.AioRpcError as exc:
                problem = f"{exc.code().name}: {exc.details()}"
            except Unavailable:  # our database (it says so in the log, once)
                problem = "the database is unavailable"
            except Exception as exc:  # another failure of ours: the same retry
                logger.exception("following the processor failed")
                problem = f"{type(exc).__name__}"
            self.connected.clear()
            if self._link is not None:
                self._link.link_changed(False)
            if not failing:  # one warning per outage, not one per attempt
                logger.warning("the feed from the processor broke (%s); reconnecting", problem)
                failing = True
            await asyncio.sleep(backoff.next())
            if self.connected.is_set():
                failing = False

    async def _session(self, backoff: Backoff) -> None:
        """One stream: subscribe, catch up, then apply what arrives, batch by batch."""
        call = self._stub.Follow(ppb.FollowRequest())
        try:
            await call.read()  # the processor's first message: subscribed
            await self._catch_up()
            self.connected.set()
            if self._link is not None:
                self._link.link_changed(True)
            backoff.reset()
            logger.info("following the processor's feed")
            arrived = _Arrivals()
            reader = asyncio.create_task(arrived.read(call), name="feed-reader")
            try:
                while True:
                    if not arrived.ready and not reader.done():
                        woken = asyncio.create_task(arrived.wake.wait())
                        await asyncio.wait([reader, woken], return_when=asyncio.FIRST_COMPLETED)
                        woken.cancel()
                    batch = arrived.take(everything=reader.done())
                    if batch:
                        await self._apply(batch)
                    elif reader.done():
                        break
                await reader  # (its error, if the stream broke)
            finally:
                reader.cancel()
        finally:
            call.cancel()

    async def _catch_up(self) -> None:
        """Every approved, unfinished workflow's log after its row's position, and every
        workflow whose end this gateway has not published (a replica may have mirrored it
        while this feed was down: the row is finished, the watchers here still wait)."""
        following = await self._db.scan(store.to_follow)
        for workflow_id, last in following:
            self._hub.seed(workflow_id, last)
        known = [*(w for w, _last in following), *self._hub.unfinished()]
        cursors = {workflow_id: self._hub.published(workflow_id) for workflow_id in known}
        if cursors:
            await self._apply(await self._gaps(cursors))
            logger.info("caught up with %d unfinished runs", len(cursors))

    async def _apply(self, batch: Sequence[ppb.FeedEvent]) -> None:
        """Write the newest snapshot of each workflow once, then publish every event in order;
        skip what was published before, read what is missing first."""
        fresh, gaps = self._sort(batch)
        if gaps:
            read = [*await self._gaps(gaps), *fresh]
            fresh, gaps = self._sort(read)
            if gaps:  # before the run's first event: what another gateway committed (a decision)
                await self._publish_own(gaps, read)
                fresh, _ = self._sort(read)
        if not fresh:
            return
        newest = {e.event.workflow_id: e.snapshot for e in fresh}
        await self._db.write(lambda conn: _mirror_all(conn, newest))
        self._hub.publish_all([Item.event(e.event, e.snapshot) for e in fresh])

    def _sort(self, batch: Sequence[ppb.FeedEvent]) -> tuple[list[ppb.FeedEvent], dict[str, int]]:
        """The events that come next, in order, and {workflow: position} of those with a gap."""
        position: dict[str, int] = {}
        fresh: list[ppb.FeedEvent] = []
        gaps: dict[str, int] = {}
        for e in sorted(batch, key=lambda e: (e.event.workflow_id, e.event.sequence)):
            workflow_id, sequence = e.event.workflow_id, e.event.sequence
            at = position.get(workflow_id, self._hub.published(workflow_id))
            if sequence <= at or workflow_id in gaps:
                continue
            if sequence > at + 1:
                gaps[workflow_id] = at
                continue
            position[workflow_id] = sequence
            fresh.append(e)
        return fresh, gaps

    async def _publish_own(self, cursors: dict[str, int], pending: Sequence[ppb.FeedEvent]) -> None:
        """Publish the gateway events after each cursor, and before the processor's first
        pending event of that workflow, from the database. A workflow created here and
        approved on another gateway has its APPROVED event only there and in the database: the
        processor's log starts after it, so without this every event of the run would wait
        behind that gap here, and this gateway's watchers would never see them."""
        first = {w: min((e.event.sequence for e in pending if e.event.workflow_id == w), default=0) for w in cursors}

        def read(conn: Connection) -> list[tuple[store.WorkflowRecord | None, list[store.EventRecord]]]:
            return [(store.get(conn, w), store.events_after(conn, w, at)) for w, at in cursors.items()]

        own = [
            Item(messages.event_message(record, event))
            for record, events in await self._db.read(read)
            if record is not None  # (workflows are never deleted)
            for event in events
            if event.sequence < first[record.workflow_id]
        ]
        self._hub.publish_all(own)

    async def _gaps(self, cursors: dict[str, int]) -> list[ppb.FeedEvent]:
        """Every event after each cursor, from the processor's log. A page answers the
        cursors in order and may stop inside one: the rest is asked for again from there."""
        found: list[ppb.FeedEvent] = []
        pending = list(cursors.items())
        while pending:
            chunk, pending = pending[:MAX_CURSORS], pending[MAX_CURSORS:]
            request = ppb.ReadEventsRequest(cursors=[ppb.FeedCursor(workflow_id=w, after_sequence=a) for w, a in chunk])
            page = await self._stub.ReadEvents(request, timeout=30)
            found.extend(page.events)
            if page.truncated and page.events:
                last = page.events[-1].event
                index = [w for w, _a in chunk].index(last.workflow_id)
                pending = [(last.workflow_id, last.sequence), *chunk[index + 1 :], *pending]
        return found

    # --- the relay's reports (gateway.outbox.Dispatches) --------------------------------------

    async def dispatched(self, row: OutboxRow, run: ppb.Run) -> None:
        def write(conn: Connection) -> None:
            store.mirror(conn, row.workflow_id, run.snapshot)
            store.delete_outbox(conn, row.id)

        await self._db.write(write)  # (the run's events come through the feed: nobody to wake)

    async def refused(self, row: OutboxRow, message: str) -> None:
        if row.kind == store.ENQUEUE:
            text = f"the processor refused the workflow: {message}"

            def fail(conn: Connection) -> tuple[store.WorkflowRecord, store.EventRecord] | None:
                store.delete_outbox(conn, row.id)
                event = workflows.fail_dispatch(conn, row.workflow_id, "DISPATCH_REFUSED", text, self._signer)
                record = store.get(conn, row.workflow_id)
                return None if event is None or record is None else (record, event)

            failed = await self._db.write(fail)
            if failed is not None:
                record, event = failed
                self._hub.publish(Item(messages.event_message(record, event)))
            return

        def forget(conn: Connection) -> None:  # a later CancelWorkflow may try again
            store.delete_outbox(conn, row.id)
            store.clear_cancel_requested(conn, row.workflow_id)

        await self._db.write(forget)


class _Arrivals:
    """The events the stream brought, handed on in whole groups: those the processor
    published together (its `more` flag says another follows at once) are applied, and their
    watchers woken, together, not one by one as each message comes in."""

    def __init__(self) -> None:
        self._events: list[ppb.FeedEvent] = []
        self.ready = 0  # how many of them end a group
        self.wake = asyncio.Event()  # set when a group is complete

    async def read(self, call: grpc.aio.UnaryStreamCall[ppb.FollowRequest, ppb.FollowResponse]) -> None:
        """Until the stream ends (`read`, as for its first message: a call is read one way)."""
        while (response := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
            assert isinstance(response, ppb.FollowResponse)
            if response.HasField("event"):
                self._events.append(response.event)
                if not response.more:
                    self.ready = len(self._events)
                    self.wake.set()

    def take(self, *, everything: bool) -> list[ppb.FeedEvent]:
        """The complete groups (`everything`: also a group the broken stream left unfinished;
        its events were committed all the same)."""
        count = len(self._events) if everything else self.ready
        batch, self._events[:count] = self._events[:count], []
        self.ready = 0
        self.wake.clear()
        return batch


def _mirror_all(conn: Connection, snapshots: dict[str, pb.StatusSnapshot]) -> None:
    for workflow_id, snapshot in snapshots.items():
        store.mirror(conn, workflow_id, snapshot)

"""The processor's application layer: what each call does with the runs, in records
(`NewRun`, `RunRecord`, `EventRecord`, findings pages), usable without gRPC. The gRPC adapter
(`processor/service.py`) turns request messages into records and records into answers; this
module runs the one short transaction each call needs and reads the logs. The work itself
happens in the scheduler. The streams (`watch`, `follow`) hand on the hub's messages as they
are: the hub builds each event's message once for all its watchers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from auditflow import statuses, trail
from auditflow.convert import utcnow
from auditflow.db import Database
from auditflow.errors import FieldViolation, InvalidArgument, NotFound, OutOfRange, Overloaded, Unavailable
from auditflow.waits import wait_for
from processor import findings_store, messages, store, transitions
from processor.messages import WatchResponse
from processor.scheduler import Scheduler
from processor.settings import Settings
from processor.store import Appended, EventCursor, EventRecord, Inserted, RunRecord

logger = logging.getLogger(__name__)

PAGE = 256
# Events a feed subscriber may fall behind before it is cut (and catches up with ReadEvents).
FEED_BUFFER = 100_000


@dataclass(frozen=True)
class NewRun:
    """An Enqueue, checked: what `store.insert_run` needs but the clock."""

    workflow_id: str
    title: str
    plan: list[dict[str, Any]]
    orchestrator: str
    max_cycles: int
    base_sequence: int
    base_hash: str | None
    approved_by: str
    approved_at: datetime | None
    trace_context: str | None

    def insert(self, conn: Connection) -> Inserted:
        return store.insert_run(
            conn,
            workflow_id=self.workflow_id,
            title=self.title,
            plan=self.plan,
            orchestrator=self.orchestrator,
            max_cycles=self.max_cycles,
            base_sequence=self.base_sequence,
            base_hash=self.base_hash,
            queued_message=f"queued for processing (approved by {self.approved_by})",
            now=utcnow(),
            approved_at=self.approved_at,
            trace_context=self.trace_context,
        )


@dataclass(frozen=True)
class FindingsPage:
    """One page of a run's findings, the token of the next (empty: none) and their total."""

    listed: list[findings_store.Listed]
    next_token: str
    total: int


class Runs:
    """The runs this processor's database holds; use on the event loop only."""

    def __init__(
        self,
        db: Database,
        hub: messages.Broadcast,
        scheduler: Scheduler,
        settings: Settings,
        signer: trail.Signer | None,
    ) -> None:
        self._db = db
        self._hub = hub
        self._scheduler = scheduler
        self._settings = settings
        self._signer = signer
        self._closing = asyncio.Event()

    def close(self) -> None:
        """End open streams with UNAVAILABLE so that clients reconnect elsewhere."""
        self._closing.set()

    async def enqueue(self, run: NewRun, refusal: InvalidArgument | None) -> Inserted:
        """Store the run and have it driven; idempotent on its workflow id. Idempotent first:
        a retried Enqueue returns the run it created even if the request would now be refused
        (a ledger file moved since), so a `refusal` is raised only when there is no such run."""
        if refusal is not None:
            existing = await self._db.read(functools.partial(store.get_run, workflow_id=run.workflow_id))
            if existing is None:
                raise refusal
            inserted = Inserted(existing, [], created=False)
        else:
            inserted = await self._scheduler.admit(run.insert)
        if not inserted.created:  # (a new run's "enqueued" is logged by the scheduler, before its start)
            logger.info("%s: enqueued again; returning the existing run", run.workflow_id)
        return inserted

    async def cancel(self, workflow_id: str, by: str, by_auth: str, reason: str) -> RunRecord:
        """Ask for the run to be cancelled (its driver stops before its next cycle)."""

        def tx(conn: Connection) -> Appended:
            run = store.lock_run(conn, workflow_id)
            if run is None:
                raise not_found(workflow_id)  # before any write, as auditflow.db requires
            events, changes = transitions.cancel_requested(run, by, reason, by_auth)
            if not events:
                return Appended(run, [])
            return store.append(conn, run, events, changes, utcnow(), self._signer)

        # Off the single writer: the run may be locked by another processor's transaction (a
        # stalled one), and waiting for that lock must never hold up this processor's own runs.
        done = await self._db.write_apart(tx)
        if done.events:
            messages.publish(self._hub, done.events)
            self._scheduler.notify_cancel(workflow_id)
            logger.info("%s: %s", workflow_id, done.events[-1].message)
        return done.run

    async def get(self, workflow_id: str) -> RunRecord:
        run = await self._db.read(functools.partial(store.get_run, workflow_id=workflow_id))
        if run is None:
            raise not_found(workflow_id)
        return run

    async def watch(self, workflow_id: str, after: int) -> AsyncIterator[WatchResponse]:
        """The run's events after `after`, then live ones, until the terminal event."""
        # Events after the cursor in the hub's cache (a run being driven) prove the run and
        # the cursor valid; otherwise the log decides.
        if not self._hub.cached_after(workflow_id, after):
            run = await self.get(workflow_id)
            if after > run.last_sequence:
                raise OutOfRange(
                    f"after_sequence {after} is past the last event ({run.last_sequence})",
                    violations=[FieldViolation("after_sequence", f"at most {run.last_sequence}")],
                )
            if statuses.is_terminal(run.status) and after == run.last_sequence:
                return  # the client has seen the end already
        self._hub.subscribe(workflow_id)
        try:
            async for message in self._follow(workflow_id, after):
                yield message
        finally:
            self._hub.unsubscribe(workflow_id)

    async def follow(self) -> AsyncGenerator[list[WatchResponse] | None, None]:
        """Every event published here, live, the events published together in one list (the
        subscriber applies them together); None first (subscribed), then after each heartbeat
        interval without events. See the contract in processor_service.proto."""
        feed = self._hub.follow(FEED_BUFFER)
        try:
            yield None  # subscribed
            while True:
                if self._closing.is_set():
                    raise Unavailable("the processor is shutting down; follow another one or reconnect")
                if not await wait_for(feed.changed, self._settings.heartbeat_interval):
                    yield None
                    continue
                items = feed.take()
                if feed.overflowed:
                    raise Overloaded(
                        f"this subscriber fell more than {FEED_BUFFER} events behind; catch up with ReadEvents"
                    )
                yield [message for _workflow_id, _sequence, message in items]
        finally:
            self._hub.unfollow(feed)

    async def read_events(self, cursors: Sequence[EventCursor], limit: int) -> tuple[list[EventRecord], bool]:
        """Events after each cursor, at most `limit`; and whether more wait."""
        return await self._db.scan(functools.partial(store.events_after_cursors, cursors=list(cursors), limit=limit))

    async def findings(
        self, query: findings_store.Query, after: findings_store.Cursor | None, size: int
    ) -> FindingsPage:
        """A page of the run's findings (NOT_FOUND for a run that does not exist)."""
        await self.get(query.workflow_id)
        records, total = await self._db.scan(lambda conn: findings_store.page(conn, query, after, size + 1))
        kept, more = findings_store.fitting(records, size)
        token = ""
        if more:
            last = findings_store.Cursor(findings_store.key_of(query.order, kept[-1].record), total)
            token = findings_store.token(query, last)
        return FindingsPage(kept, token, total)

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
                yield messages.watch_heartbeat(await self.get(wid), utcnow())
                idle_since, idle = time.monotonic(), 0.0
            await self._hub.wait(wid, after, max(settings.heartbeat_interval - idle, 0.001))

    async def _read_events(self, wid: str, after: int) -> list[WatchResponse]:
        read = functools.partial(store.events_after, workflow_id=wid, after=after, limit=PAGE)
        return [messages.watch_event(record) for record in await self._db.read(read)]


def not_found(workflow_id: str) -> NotFound:
    return NotFound(f"no run for workflow {workflow_id}", metadata={"workflow_id": workflow_id})

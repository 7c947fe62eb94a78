"""The claimer: decides which runs this processor takes, and takes them by lease.

Why leases: several processors may share one database, and any of them may die. A run is
claimable when it is QUEUED or RUNNING and nobody holds a live lease on it, so the runs of a
dead processor are reclaimed by the ordinary claim path once its leases expire; no sweeper.
The oldest claimable runs go first, as many as there are free slots.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Collection

from sqlalchemy import Connection

from auditflow import metrics, tracing
from auditflow.convert import utcnow
from auditflow.db import Database
from auditflow.errors import Unavailable
from auditflow.waits import wait_for
from processor import messages, store, transitions
from processor.lease import lease_end
from processor.settings import Settings
from processor.store import Appended, Inserted, RunRecord

# One logger name for a run's lifecycle, whichever part logs it (operators filter on it).
logger = logging.getLogger("processor.scheduler")

Insert = Callable[[Connection], Inserted]


class Claimer:
    """Claims runs for the slots the scheduler has free and hands each to `drive`. Use on the
    event loop only."""

    def __init__(
        self,
        db: Database,
        hub: messages.Broadcast,
        settings: Settings,
        *,
        driving: Callable[[], Collection[str]],
        drive: Callable[[RunRecord, float], None],
        stopping: asyncio.Event,
    ) -> None:
        self._db = db
        self._hub = hub
        self._settings = settings
        self.worker_id = settings.worker_id
        # The ids of the runs being driven, and what starts driving a claimed run (given the
        # clock read before its claim's write).
        self._driving = driving
        self._drive = drive
        self._stopping = stopping
        self.wakeup = asyncio.Event()
        # Held across a claim's write, so that two claims never count the same free slot.
        self._claiming = asyncio.Lock()

    async def loop(self) -> None:
        """Claim whenever woken (a run was enqueued or a slot freed) or every poll interval,
        until the processor stops."""
        woken = True  # look at once on start-up
        while not self._stopping.is_set():
            self.wakeup.clear()
            try:
                await self._claim(check_first=not woken)
            except Unavailable:
                pass  # (the database says so in the log, once per outage; the next poll retries)
            except Exception:
                logger.exception("claiming runs failed; retrying in %.1f s", self._settings.poll_interval)
            woken = await wait_for(self.wakeup, self._settings.poll_interval)

    async def _claim(self, *, check_first: bool) -> None:
        """Claim as many runs as there are free slots. A poll first checks with a cheap read
        so that idle processors do not queue write transactions."""
        if self.free() <= 0:
            return
        if check_first:
            now, exclude = utcnow(), set(self._driving())
            if not await self._db.read(lambda conn: store.count_claimable(conn, now, exclude)):
                return
        async with self._claiming:
            if self.free() > 0:
                await self._claim_locked()

    async def admit(self, insert: Insert) -> Inserted:
        """Write a newly enqueued run (`insert`), publish its events and have it driven.

        When a slot is free, the run is claimed in the same transaction as its insert (after
        a claim under way, which may take that slot): its first cycle starts without a second
        commit or a trip through the claim loop, and an idle processor always answers with
        the run RUNNING. The claim still takes the oldest claimable runs, so nothing jumps
        the queue. When busy, the insert is group-committed with others and the claim loop
        takes the run when a slot frees. Returns the run as it is after the commit, whether
        it is new, and its QUEUED event."""
        if self.free() > 0:
            async with self._claiming:
                if self.free() > 0:
                    inserted, claimed = await self._claim_locked(insert)
                    assert inserted is not None
                    started = [c.run for c in claimed if c.run.workflow_id == inserted.run.workflow_id]
                    return Inserted(started[0], inserted.events, inserted.created) if started else inserted
        inserted = await self._db.write(functools.partial(_insert_queued, insert))
        self._queued(inserted)
        if inserted.created:
            self.wakeup.set()
        return inserted

    async def _claim_locked(self, insert: Insert | None = None) -> tuple[Inserted | None, list[Appended]]:
        """Under `_claiming`, with a slot free: claim as many runs as there are free slots in
        one write (after `insert`, if given, in the same transaction; no claim if it found the
        run already there), then publish, log and drive them."""
        free, exclude = self.free(), set(self._driving())

        def tx(conn: Connection) -> tuple[Inserted | None, list[Appended]]:
            inserted = insert(conn) if insert is not None else None
            if inserted is not None and not inserted.created:
                return inserted, []  # the run was there already
            claimed = self._claim_tx(conn, free, exclude)
            if inserted is not None and inserted.run.workflow_id not in {c.run.workflow_id for c in claimed}:
                store.announce_queued(conn)  # older runs took the free slots: a peer may claim it
            return inserted, claimed

        leased_at = time.monotonic()  # before the claim's clock: its lease lasts at least this long
        inserted, claimed = await self._db.write(tx)
        self._started(claimed, leased_at, queued=inserted)
        return inserted, claimed

    def _claim_tx(self, conn: Connection, limit: int, exclude: set[str]) -> list[Appended]:
        now = utcnow()
        expires_at = lease_end(now, self._settings.lease_seconds)
        runs = store.claim(conn, owner=self.worker_id, now=now, expires_at=expires_at, limit=limit, exclude=exclude)
        claimed = []
        for run in runs:
            events, changes = transitions.started(run, self.worker_id)
            claimed.append(store.append(conn, run, events, changes, now))
        return claimed

    def free(self) -> int:
        """Slots for more runs (none while stopping)."""
        return 0 if self._stopping.is_set() else self._settings.max_concurrent - len(self._driving())

    def _queued(self, inserted: Inserted) -> None:
        """After an insert's commit: publish its QUEUED event and log it (before the claim's)."""
        messages.publish(self._hub, inserted.events)
        if inserted.created:
            run = inserted.run
            logger.info("%s: enqueued, %d steps: %s", run.workflow_id, len(run.plan), inserted.events[-1].message)

    def _started(self, claimed: list[Appended], leased_at: float, queued: Inserted | None = None) -> None:
        """After a claim's commit (with `queued`, the insert it shared a commit with): publish,
        log and drive. Runs under `_claiming`, so that the next claim counts these runs' slots
        as taken. `leased_at` is this process's clock before the claim: a pause between the
        commit and here (a stopped process) counts against the lease, so the first step does
        not start on a lease that may have been taken over meanwhile.

        The hub keeps the events of a run while it is driven (from before its first publish
        here), so that the watchers that come right after an Enqueue, the gateway's, read
        them from memory instead of the database."""
        for c in claimed:
            self._hub.subscribe(c.run.workflow_id)
        if queued is not None:
            self._queued(queued)
        for c in claimed:
            run = c.run
            messages.publish(self._hub, c.events)
            _count_claim(run, self.worker_id)
            logger.info(
                "%s: %s (cycle %d of at most %d)", run.workflow_id, c.events[-1].message, run.cycle, run.max_cycles
            )
            if self._stopping.is_set():  # stop() releases the lease we just took
                self._hub.unsubscribe(run.workflow_id)
            else:
                self._drive(run, leased_at)


def _insert_queued(insert: Insert, conn: Connection) -> Inserted:
    """Insert a run this processor has no slot for, and tell the others it is claimable."""
    inserted = insert(conn)
    if inserted.created:
        store.announce_queued(conn)
    return inserted


def _count_claim(run: RunRecord, worker_id: str) -> None:
    """Count a committed claim; a run's first (epoch 1) also times approve-to-first-cycle."""
    first = run.lease_epoch == 1
    metrics.LEASE_CLAIMS.labels("first" if first else "rescue").inc()
    if first and run.approved_at is not None:
        metrics.APPROVE_TO_FIRST_CYCLE.observe(max(0.0, (utcnow() - run.approved_at).total_seconds()))
    attributes = {"auditflow.worker_id": worker_id, "auditflow.lease_epoch": run.lease_epoch}
    with tracing.span("claimed", parent=run.trace_context or "", attributes=attributes):
        pass

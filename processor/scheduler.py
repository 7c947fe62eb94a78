"""The scheduler: claims runs by lease and drives each through its cycles.

Why leases: several processors may share one database, and any of them may die. A run is
claimable when it is QUEUED or RUNNING and nobody holds a live lease on it, so the runs of a
dead processor are reclaimed by the ordinary claim path once its leases expire; no sweeper.

Per cycle: call the orchestrator (off the event loop), then ONE transaction, conditional on
still holding the lease, that checkpoints the cycle, appends its event(s) and renews the
lease. A cycle whose commit finds the lease gone is abandoned: whoever holds the lease now
reruns it from the last checkpoint (cycles are at-least-once). Event sequences and cycle
numbers thus stay gap-free across crashes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from auditflow import logs, metrics, procedures, statuses, tracing, trail
from auditflow.convert import utcnow
from auditflow.db import Database
from auditflow.errors import Unavailable
from auditflow.procedures import CriticalError
from auditflow.watch import wait_for
from processor import findings, messages, orchestrator, store, transitions
from processor.orchestrator import CycleResult, RunInfo
from processor.settings import Settings
from processor.store import EventRecord, Lease, RunRecord
from processor.transitions import Errored, Outcome, Succeeded, Transition

logger = logging.getLogger(__name__)

# A step starts only with at least this share of the lease left by our own clock; else the
# lease is renewed first (see Scheduler._lease_holds).
LEASE_MARGIN = 0.5

Committed = tuple[RunRecord, list[EventRecord]]
Inserted = tuple[RunRecord, bool, list[EventRecord]]  # the run, whether it is new, its events


class _LeaseInDoubt(Exception):
    """Raised where a step would start, when less than LEASE_MARGIN of the lease is left."""


@dataclass
class _Driver:
    """A run this processor is driving."""

    workflow_id: str
    # The lease this driver holds (its epoch is the fencing token handed to the orchestrator).
    lease: Lease
    # time.monotonic() taken before the write that last extended the lease (the claim, a
    # commit or a renewal): that write set the expiry from a clock read after it, so the
    # lease lasts at least until renewed_at + lease_seconds by this process's clock.
    renewed_at: float
    # Set to cut the pause between cycles short (stop, or a cancel arrived here).
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Scheduler:
    """Claims up to `max_concurrent` runs and drives them. Use on the event loop only."""

    def __init__(self, db: Database, hub: messages.Hub, settings: Settings, signer: trail.Signer | None = None) -> None:
        self._db = db
        self._hub = hub
        self._settings = settings
        self._signer = signer
        self.worker_id = settings.worker_id
        self._executor = ThreadPoolExecutor(max_workers=settings.max_concurrent, thread_name_prefix="cycle")
        self._drivers: dict[str, _Driver] = {}
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        # Held across a claim's write, so that two claims never count the same free slot.
        self._claiming = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        metrics.MAX_CONCURRENT.set(settings.max_concurrent)

    @property
    def active(self) -> set[str]:
        """Ids of the runs this processor is driving now."""
        return set(self._drivers)

    async def start(self) -> None:
        """Start claiming. Leases still held under our worker id belong to a previous
        incarnation (ids are unique among live processors), so they are released first and
        a restarted processor with a stable --worker-id resumes its runs at once."""
        orphans = await self._db.write(lambda conn: store.release_leases(conn, self.worker_id))
        if orphans:
            logger.info("released %d leases left by a previous run of worker %s", orphans, self.worker_id)
        self._loop_task = asyncio.create_task(self._claim_loop(), name="scheduler")
        logger.info("scheduler %s started (max %d concurrent runs)", self.worker_id, self._settings.max_concurrent)

    def wake(self) -> None:
        """Look for claimable runs now (a run was enqueued or a slot freed)."""
        self._wakeup.set()

    def notify_cancel(self, workflow_id: str) -> None:
        """A cancel was requested: if we drive this run, stop waiting for its next cycle."""
        driver = self._drivers.get(workflow_id)
        if driver is not None:
            driver.wake.set()

    async def stop(self, grace: float) -> int:
        """Stop claiming, give running cycles `grace` seconds to finish, release our leases.

        A cycle still running after `grace` cannot be stopped (it is a thread): its run keeps
        its lease, so nobody starts the same step while it may still run, and the number of
        such cycles is returned so that the process can exit without waiting for them."""
        self._stopping.set()
        self._wakeup.set()
        for driver in self._drivers.values():
            driver.wake.set()
        if self._loop_task is not None:
            await self._loop_task
        tasks = {d.task: d.workflow_id for d in self._drivers.values() if d.task is not None}
        abandoned: list[str] = []
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            abandoned = [tasks[task] for task in pending]
            for task in pending:
                task.cancel()
            if pending:
                logger.warning(
                    "%d cycles did not finish within %.1f s; their leases expire in %.0f s",
                    len(pending), grace, self._settings.lease_seconds,
                )  # fmt: skip
                await asyncio.gather(*pending, return_exceptions=True)
        released = await self._db.write(lambda conn: store.release_leases(conn, self.worker_id, keep=abandoned))
        self._executor.shutdown(wait=False, cancel_futures=True)
        logger.info("scheduler %s stopped; released %d leases", self.worker_id, released)
        return len(abandoned)

    # --- claiming ------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        woken = True  # look at once on start-up
        while not self._stopping.is_set():
            self._wakeup.clear()
            try:
                await self._claim(check_first=not woken)
            except Unavailable:
                pass  # (the database says so in the log, once per outage; the next poll retries)
            except Exception:
                logger.exception("claiming runs failed; retrying in %.1f s", self._settings.poll_interval)
            woken = await wait_for(self._wakeup, self._settings.poll_interval)

    async def _claim(self, *, check_first: bool) -> None:
        """Claim as many runs as there are free slots. A poll first checks with a cheap read
        so that idle processors do not queue write transactions."""
        if self._free() <= 0:
            return
        if check_first:
            now = utcnow()
            exclude = set(self._drivers)
            if not await self._db.read(lambda conn: store.count_claimable(conn, now, exclude)):
                return
        async with self._claiming:
            if self._free() > 0:
                await self._claim_locked()

    async def admit(self, insert: Callable[[Connection], Inserted]) -> Inserted:
        """Write a newly enqueued run (`insert`), publish its events and have it driven.

        When a slot is free, the run is claimed in the same transaction as its insert (after
        a claim under way, which may take that slot): its first cycle starts without a second
        commit or a trip through the claim loop, and an idle processor always answers with
        the run RUNNING. The claim still takes the oldest claimable runs, so nothing jumps
        the queue. When busy, the insert is group-committed with others and the claim loop
        takes the run when a slot frees. Returns the run as it is after the commit, whether
        it is new, and its QUEUED event."""
        if self._free() > 0:
            async with self._claiming:
                if self._free() > 0:
                    inserted, claimed = await self._claim_locked(insert)
                    assert inserted is not None
                    run, created, events = inserted
                    started = [r for r, _events in claimed if r.workflow_id == run.workflow_id]
                    return (started[0] if started else run), created, events
        inserted = await self._db.write(functools.partial(_insert_queued, insert))
        self._queued(inserted)
        if inserted[1]:
            self.wake()
        return inserted

    async def _claim_locked(
        self, insert: Callable[[Connection], Inserted] | None = None
    ) -> tuple[Inserted | None, list[Committed]]:
        """Under `_claiming`, with a slot free: claim as many runs as there are free slots in
        one write (after `insert`, if given, in the same transaction; no claim if it found the
        run already there), then publish, log and drive them."""
        free, exclude = self._free(), set(self._drivers)

        def tx(conn: Connection) -> tuple[Inserted | None, list[Committed]]:
            inserted = insert(conn) if insert is not None else None
            if inserted is not None and not inserted[1]:
                return inserted, []  # the run was there already
            claimed = self._claim_tx(conn, free, exclude)
            if inserted is not None and inserted[0].workflow_id not in {r.workflow_id for r, _ in claimed}:
                store.announce_queued(conn)  # older runs took the free slots: a peer may claim it
            return inserted, claimed

        leased_at = time.monotonic()  # before the claim's clock: its lease lasts at least this long
        inserted, claimed = await self._db.write(tx)
        self._started(claimed, leased_at, queued=inserted)
        return inserted, claimed

    def _queued(self, inserted: Inserted) -> None:
        """After an insert's commit: publish its QUEUED event and log it (before the claim's)."""
        run, created, events = inserted
        messages.publish(self._hub, events)
        if created:
            logger.info("%s: enqueued, %d steps: %s", run.workflow_id, len(run.plan), events[-1].message)

    def _free(self) -> int:
        """Slots for more runs (none while stopping)."""
        return 0 if self._stopping.is_set() else self._settings.max_concurrent - len(self._drivers)

    def _started(self, claimed: list[Committed], leased_at: float, queued: Inserted | None = None) -> None:
        """After a claim's commit (with `queued`, the insert it shared a commit with): publish,
        log and drive. Runs under `_claiming`, so that the next claim counts these runs' slots
        as taken. `leased_at` is this process's clock before the claim: a pause between the
        commit and here (a stopped process) counts against the lease, so the first step does
        not start on a lease that may have been taken over meanwhile.

        The hub keeps the events of a run while it is driven (from before its first publish
        here), so that the watchers that come right after an Enqueue, the gateway's, read
        them from memory instead of the database."""
        for run, _events in claimed:
            self._hub.subscribe(run.workflow_id)
        if queued is not None:
            self._queued(queued)
        for run, events in claimed:
            messages.publish(self._hub, events)
            _claimed(run, self.worker_id)
            message = events[-1].message
            logger.info("%s: %s (cycle %d of at most %d)", run.workflow_id, message, run.cycle, run.max_cycles)
            if self._stopping.is_set():  # stop() releases the lease we just took
                self._hub.unsubscribe(run.workflow_id)
            else:
                self._start_driver(run, leased_at)

    def _claim_tx(self, conn: Connection, limit: int, exclude: set[str]) -> list[Committed]:
        now = utcnow()
        runs = store.claim(
            conn, owner=self.worker_id, now=now, expires_at=self._lease_end(now), limit=limit, exclude=exclude
        )
        committed = []
        for run in runs:
            events, changes = transitions.started(run, self.worker_id)
            committed.append(store.append(conn, run, events, changes, now))
        return committed

    def _lease_end(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self._settings.lease_seconds)

    def _start_driver(self, run: RunRecord, leased_at: float) -> None:
        assert run.lease is not None, "a claimed run has a lease"
        driver = _Driver(run.workflow_id, run.lease, renewed_at=leased_at)
        self._drivers[run.workflow_id] = driver
        driver.task = asyncio.create_task(self._drive(driver, run), name=f"run {run.workflow_id}")
        metrics.RUNS_DRIVEN.set(len(self._drivers))

    # --- driving a run -----------------------------------------------------------------------

    async def _drive(self, driver: _Driver, run: RunRecord) -> None:
        logs.bind(workflow_id=run.workflow_id)  # (this task's records; its renewer copies them)
        renewer = asyncio.create_task(self._keep_lease(driver), name=f"lease {run.workflow_id}")
        try:
            await self._cycles(driver, run)
        except asyncio.CancelledError:
            logger.warning("%s: abandoned mid-cycle on shutdown; it resumes from its checkpoint", run.workflow_id)
            raise
        except Unavailable:
            logger.warning("%s: the database is unavailable; the run resumes from its checkpoint", run.workflow_id)
        except Exception:
            logger.exception("%s: driving the run failed; it resumes once its lease expires", run.workflow_id)
        finally:
            renewer.cancel()
            self._drivers.pop(run.workflow_id, None)
            metrics.RUNS_DRIVEN.set(len(self._drivers))
            self._hub.unsubscribe(run.workflow_id)
            self._wakeup.set()

    async def _cycles(self, driver: _Driver, run: RunRecord) -> None:
        """The first cycle starts at once; `cycle_delay` only separates later ones."""
        while True:
            if run.cancel_requested:
                await self._commit(driver, run, transitions.cancelled_between_cycles)
                return
            committed = await self._one_cycle(driver, run)
            if committed is None or statuses.is_terminal(committed.status):
                return
            refreshed = await self._between_cycles(driver, committed)
            if refreshed is None:
                return
            run = refreshed

    async def _between_cycles(self, driver: _Driver, run: RunRecord) -> RunRecord | None:
        """Wait `cycle_delay` (cut short by stop or a cancel), then re-read the run: a cancel
        may have been requested through any processor. None: stop driving it."""
        await wait_for(driver.wake, self._settings.cycle_delay)
        driver.wake.clear()
        if self._stopping.is_set():
            return None
        current = await self._db.read(functools.partial(store.get_run, workflow_id=run.workflow_id))
        if current is None or current.lease != driver.lease or statuses.is_terminal(current.status):
            owner = current.lease_owner if current else None
            logger.warning("%s: lease lost to %s; abandoning the run", run.workflow_id, owner)
            return None
        return current

    async def _one_cycle(self, driver: _Driver, run: RunRecord) -> RunRecord | None:
        if not await self._lease_holds(driver):
            return None
        cycle = run.cycle + 1
        logs.bind(cycle=cycle)
        info = RunInfo(run.workflow_id, run.title, run.plan, run.max_cycles, cycle, driver.lease.epoch)
        logger.debug("%s cycle %d: state %s", run.workflow_id, cycle, run.state)
        procedure = _procedure_of(run)
        attributes = {"auditflow.workflow_id": run.workflow_id, "auditflow.cycle": cycle,
                      "auditflow.procedure": procedure, "auditflow.lease_epoch": driver.lease.epoch}  # fmt: skip
        with tracing.span(f"cycle {cycle}", parent=run.trace_context or "", attributes=attributes) as span:
            started = time.perf_counter()
            called = await self._call_orchestrator(driver, run, info)
            if called is None:
                return None
            outcome, found = called
            metrics.CYCLE_SECONDS.labels(procedure).observe(time.perf_counter() - started)
            if isinstance(outcome, Errored):
                metrics.CYCLE_ERRORS.labels(procedure, "critical" if outcome.critical else "error").inc()
            settings = self._settings

            def decide(locked: RunRecord) -> Transition:
                end = self._lease_end(utcnow())
                return transitions.after_cycle(
                    locked, cycle, outcome, max_failures=settings.max_consecutive_failures, lease_expires_at=end
                )

            committed = await self._commit(driver, run, decide, found)
            if span is not None and committed is not None:
                span.set_attributes({"auditflow.status": statuses.name(committed.status),
                                     "auditflow.message": committed.last_message,
                                     "auditflow.findings": len(found)})  # fmt: skip
            return committed

    async def _call_orchestrator(
        self, driver: _Driver, run: RunRecord, info: RunInfo
    ) -> tuple[Outcome, list[dict[str, Any]]] | None:
        """Run one cycle and classify how it ended, with the findings to store (checked and
        bounded on a worker thread); never raises (except cancellation). None: the lease was
        lost before the cycle could start.

        The lease is checked again on the cycle's thread right before the orchestrator runs,
        after the hop to it: a pause there (a stopped process, a busy pool) renews the lease
        first, or lets the run go."""
        check = functools.partial(self._check_lease, driver)
        while True:
            try:
                return await self._run_cycle(run, info, check)
            except _LeaseInDoubt:
                if not await self._lease_holds(driver):
                    return None

    async def _run_cycle(
        self, run: RunRecord, info: RunInfo, check: Callable[[], None]
    ) -> tuple[Outcome, list[dict[str, Any]]]:
        wid, cycle = run.workflow_id, info.cycle
        try:
            plugin = orchestrator.load(run.orchestrator)
            state = run.state
            if state is None:
                state = await orchestrator.call(self._executor, plugin.start, replace(info, cycle=0), check=check)
            result = await orchestrator.call(self._executor, plugin.cycle, info, state, check=check)
            _check_result(result)
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self._executor, _normalized, result.findings)
        except _LeaseInDoubt:
            raise
        except (CriticalError, orchestrator.UnknownOrchestrator) as exc:
            # Logged at ERROR with the FAILED event it causes.
            return Errored(str(exc) or type(exc).__name__, critical=True), []
        except Exception as exc:
            logger.warning("%s cycle %d failed: %s: %s", wid, cycle, type(exc).__name__, exc, exc_info=True)
            return Errored(f"{type(exc).__name__}: {exc}"), []
        return Succeeded(result), found

    async def _commit(
        self,
        driver: _Driver,
        run: RunRecord,
        decide: Callable[[RunRecord], Transition],
        found: list[dict[str, Any]] | None = None,
    ) -> RunRecord | None:
        """Apply `decide(locked run)` and store the cycle's findings in one transaction if we
        still hold the lease; publish the events. None when the lease was lost (the run is
        abandoned to its new owner, and so are the findings: it stores them when it reruns)."""

        def tx(conn: Connection) -> Committed | None:
            locked = store.lock_run(conn, run.workflow_id, lease=driver.lease)
            if locked is None:
                return None
            events, changes = decide(locked)
            if found:
                findings.add(conn, locked.workflow_id, locked.findings_count + 1, found)
                changes = {**changes, "findings_count": locked.findings_count + len(found)}
            return store.append(conn, locked, events, changes, utcnow(), self._signer)

        started = time.monotonic()
        committed = await self._db.write(tx)
        if committed is None:
            metrics.FENCED.inc()
            logger.warning("%s: lease lost; abandoning the run to its new owner", run.workflow_id)
            return None
        updated, events = committed
        driver.renewed_at = max(driver.renewed_at, started)
        messages.publish(self._hub, events)
        _log_events(updated, events)
        return updated

    def _lease_safe(self, driver: _Driver) -> bool:
        """At least LEASE_MARGIN of the lease is surely left, by this process's own monotonic
        clock (any thread)."""
        left = driver.renewed_at + self._settings.lease_seconds - time.monotonic()
        return left >= self._settings.lease_seconds * LEASE_MARGIN

    def _check_lease(self, driver: _Driver) -> None:
        """Raise _LeaseInDoubt unless the lease is safe (any thread)."""
        if not self._lease_safe(driver):
            raise _LeaseInDoubt(driver.workflow_id)

    async def _lease_holds(self, driver: _Driver) -> bool:
        """A step never starts on a lease that may be gone. With less than LEASE_MARGIN of the
        lease left by this process's own monotonic clock (after a pause: a stopped process, a
        slow commit, a long GC), the lease is renewed first, a compare-and-set on its owner; if
        another processor took the run meanwhile, or the renewal fails, the step does not start
        here (the run resumes from its checkpoint wherever its lease is)."""
        if self._lease_safe(driver):
            return True
        try:
            if await self._renew(driver):
                return True
            logger.warning("%s: the lease moved to another processor before the next step; abandoning the run",
                           driver.workflow_id)  # fmt: skip
        except Exception as exc:
            logger.warning("%s: cannot renew the lease before the next step (%s); not starting it",
                           driver.workflow_id, type(exc).__name__)  # fmt: skip
        return False

    async def _renew(self, driver: _Driver) -> bool:
        """Extend the lease if this processor still holds it (False: it was lost)."""
        renewing = time.monotonic()
        end = self._lease_end(utcnow())
        renew = functools.partial(store.renew_lease, workflow_id=driver.workflow_id, lease=driver.lease,
                                  expires_at=end)  # fmt: skip
        kept = await self._db.write(renew)
        metrics.LEASE_RENEWALS.labels("kept" if kept else "lost").inc()
        if kept:
            driver.renewed_at = max(driver.renewed_at, renewing)
            logger.debug("%s: lease renewed until %s", driver.workflow_id, end.isoformat())
        return kept

    async def _keep_lease(self, driver: _Driver) -> None:
        """Renew the lease whenever lease_seconds/3 pass without a commit renewing it, so a
        slow cycle (or a long cycle_delay) is not taken for a dead processor's."""
        interval = self._settings.lease_seconds / 3
        workflow_id = driver.workflow_id
        while True:
            await asyncio.sleep(max(0.0, driver.renewed_at + interval - time.monotonic()))
            if time.monotonic() - driver.renewed_at < interval:
                continue
            try:
                kept = await self._renew(driver)
            except Exception as exc:
                logger.warning("%s: renewing the lease failed; retrying", workflow_id,
                               exc_info=not isinstance(exc, Unavailable))  # fmt: skip
                await asyncio.sleep(min(1.0, interval))
                continue
            if not kept:
                logger.warning("%s: lease lost while the run was in progress", workflow_id)
                return


def _insert_queued(insert: Callable[[Connection], Inserted], conn: Connection) -> Inserted:
    """Insert a run this processor has no slot for, and tell the others it is claimable."""
    inserted = insert(conn)
    if inserted[1]:
        store.announce_queued(conn)
    return inserted


def _claimed(run: RunRecord, worker_id: str) -> None:
    """Count a committed claim; a run's first (epoch 1) also times approve-to-first-cycle."""
    first = run.lease_epoch == 1
    metrics.LEASE_CLAIMS.labels("first" if first else "rescue").inc()
    if first and run.approved_at is not None:
        metrics.APPROVE_TO_FIRST_CYCLE.observe(max(0.0, (utcnow() - run.approved_at).total_seconds()))
    attributes = {"auditflow.worker_id": worker_id, "auditflow.lease_epoch": run.lease_epoch}
    with tracing.span("claimed", parent=run.trace_context or "", attributes=attributes):
        pass


def _procedure_of(run: RunRecord) -> str:
    """The procedure of the step a cycle works on, for metrics: the plan orchestrator's next
    step, if it names a registered procedure (a bounded label set); else "other"."""
    state = run.state or {}
    index = state.get("next_step", 0) if isinstance(state, dict) else 0
    if run.orchestrator == orchestrator.DEFAULT and isinstance(index, int) and 0 <= index < len(run.plan):
        name = run.plan[index].get("procedure")
        if isinstance(name, str) and procedures.REGISTRY.get(name) is not None:
            return name
    return metrics.OTHER


def _normalized(raw: list[Any]) -> list[dict[str, Any]]:
    """A cycle's findings, checked and bounded for the table (ValueError: the cycle fails)."""
    return [findings.normalize(f, int(f.get("step", 0)) if isinstance(f, dict) else 0, "") for f in raw]


def _check_result(result: Any) -> None:
    """Reject what cannot be checkpointed before it reaches the transaction."""
    if not isinstance(result, CycleResult):
        raise TypeError(f"cycle returned {type(result).__name__}, not CycleResult")
    json.dumps(result.state)
    json.dumps(result.result)


def _log_events(run: RunRecord, events: list[EventRecord]) -> None:
    for event in events:
        wid = event.workflow_id
        if event.status == statuses.S.WORKFLOW_STATUS_FAILED:
            logger.error("%s: %s (reason %s)", wid, event.message, event.error_reason)
        elif event.type == transitions.E.EVENT_TYPE_CYCLE_FAILED:
            logger.debug("%s: recorded %s", wid, event.message)  # the WARNING was logged with its traceback
        else:
            progress = f"{event.progress_done}/{event.progress_total}"
            logger.info("%s cycle %d/%d: %s (progress %s)", wid, event.cycle, run.max_cycles, event.message, progress)

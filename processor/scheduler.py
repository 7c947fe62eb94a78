"""The scheduler: this processor's runs, from claim to release.

Three parts, each with one job (as river splits producer, executor and completer):
`processor.claimer` decides which runs to take and takes them by lease;
`processor.driver` runs one run's cycles; `processor.lease` renews, loses and fences one
run's lease. The scheduler owns the set of runs being driven, wires the parts together, and
starts and stops them.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from auditflow import metrics, trail
from auditflow.db import Database
from processor import messages, store
from processor.claimer import Claimer, Insert
from processor.driver import Driver, Workshop
from processor.lease import LeaseKeeper
from processor.settings import Settings
from processor.store import Inserted, RunRecord

logger = logging.getLogger(__name__)


class Scheduler:
    """Claims up to `max_concurrent` runs and drives them. Use on the event loop only."""

    def __init__(
        self, db: Database, hub: messages.Broadcast, settings: Settings, signer: trail.Signer | None = None
    ) -> None:
        self._db = db
        self._hub = hub
        self._settings = settings
        self.worker_id = settings.worker_id
        self._executor = ThreadPoolExecutor(max_workers=settings.max_concurrent, thread_name_prefix="cycle")
        self._stopping = asyncio.Event()
        self._shop = Workshop(db, hub, settings, self._executor, self._stopping, signer)
        self._drivers: dict[str, Driver] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._claimer = Claimer(
            db, hub, settings, driving=self._drivers.keys, drive=self._drive, stopping=self._stopping
        )
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
        self._loop_task = asyncio.create_task(self._claimer.loop(), name="scheduler")
        logger.info("scheduler %s started (max %d concurrent runs)", self.worker_id, self._settings.max_concurrent)

    def wake(self) -> None:
        """Look for claimable runs now (a run was enqueued or a slot freed)."""
        self._claimer.wakeup.set()

    async def admit(self, insert: Insert) -> Inserted:
        """Write a newly enqueued run and have it driven (see Claimer.admit)."""
        return await self._claimer.admit(insert)

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
        self.wake()
        for driver in self._drivers.values():
            driver.wake.set()
        if self._loop_task is not None:
            await self._loop_task
        abandoned = await self._wait_for_drivers(grace)
        released = await self._db.write(lambda conn: store.release_leases(conn, self.worker_id, keep=abandoned))
        self._executor.shutdown(wait=False, cancel_futures=True)
        logger.info("scheduler %s stopped; released %d leases", self.worker_id, released)
        return len(abandoned)

    async def _wait_for_drivers(self, grace: float) -> list[str]:
        """Wait up to `grace` for the drivers to end; cancel the rest and return their runs."""
        tasks = {task: wid for wid, task in self._tasks.items()}
        if not tasks:
            return []
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            logger.warning(
                "%d cycles did not finish within %.1f s; their leases expire in %.0f s",
                len(pending),
                grace,
                self._settings.lease_seconds,
            )
            await asyncio.gather(*pending, return_exceptions=True)
        return [tasks[task] for task in pending]

    def _drive(self, run: RunRecord, leased_at: float) -> None:
        """Drive a run just claimed (`leased_at`: the clock read before the claim's write)."""
        keeper = LeaseKeeper.on(self._db, run, leased_at, self._settings.lease_seconds)
        driver = Driver(self._shop, keeper)
        self._drivers[run.workflow_id] = driver
        self._tasks[run.workflow_id] = asyncio.create_task(self._driven(driver, run), name=f"run {run.workflow_id}")
        metrics.RUNS_DRIVEN.set(len(self._drivers))

    async def _driven(self, driver: Driver, run: RunRecord) -> None:
        """Drive the run, then free its slot and look for more work."""
        try:
            await driver.drive(run)
        finally:
            self._drivers.pop(run.workflow_id, None)
            self._tasks.pop(run.workflow_id, None)
            metrics.RUNS_DRIVEN.set(len(self._drivers))
            self._hub.unsubscribe(run.workflow_id)
            self.wake()

"""The lease keeper: one run's lease as this processor holds it, renewed, lost and fenced.

Why a lease: several processors may share one database and any of them may die or freeze;
the lease says who drives a run, and its epoch (one more on every claim) fences the writes of
a holder that lost it. A step starts only with at least LEASE_MARGIN of the lease surely left
by this process's own monotonic clock (which keeps counting while the process is stopped);
else the lease is first renewed, a compare-and-set on its owner and epoch, and the step does
not start here if another processor took the run meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from auditflow import metrics
from auditflow.convert import utcnow
from auditflow.db import Database
from auditflow.errors import Unavailable
from processor import store
from processor.store import Lease

# One logger name for a run's lifecycle, whichever part logs it (operators filter on it).
logger = logging.getLogger("processor.scheduler")

# A step starts only with at least this share of the lease left by our own clock.
LEASE_MARGIN = 0.5

# Writes the renewal of a lease to the given expiry; False: the lease is no longer ours.
Renewal = Callable[[datetime], Awaitable[bool]]


class LeaseInDoubt(Exception):
    """Raised where a step would start, when less than LEASE_MARGIN of the lease is left."""


def lease_end(now: datetime, seconds: float) -> datetime:
    """When a lease written at `now` expires."""
    return now + timedelta(seconds=seconds)


class LeaseKeeper:
    """One run's lease. `safe` and `check` may be called from any thread; the rest on the
    event loop."""

    def __init__(
        self,
        workflow_id: str,
        lease: Lease,
        *,
        leased_at: float,
        seconds: float,
        renewal: Renewal,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workflow_id = workflow_id
        # The epoch is the fencing token handed to the orchestrator and checked by commits.
        self.lease = lease
        self.seconds = seconds
        # The clock read before the write that last extended the lease (the claim, a commit
        # or a renewal): that write set the expiry from a clock read after it, so the lease
        # lasts at least until renewed_at + seconds by this process's clock.
        self.renewed_at = leased_at
        self._renewal = renewal
        self._clock = clock

    @classmethod
    def on(cls, db: Database, run: store.RunRecord, leased_at: float, seconds: float) -> LeaseKeeper:
        """The keeper of the lease this processor just claimed on `run`, renewed in `db`."""
        assert run.lease is not None, "a claimed run has a lease"
        lease, wid = run.lease, run.workflow_id

        async def renewal(end: datetime) -> bool:
            return await db.write(functools.partial(store.renew_lease, workflow_id=wid, lease=lease, expires_at=end))

        return cls(wid, lease, leased_at=leased_at, seconds=seconds, renewal=renewal)

    def now(self) -> float:
        """This keeper's clock: read it before a write that extends the lease."""
        return self._clock()

    def extended(self, since: float) -> None:
        """A write begun at `since` (this keeper's clock) extended the lease."""
        self.renewed_at = max(self.renewed_at, since)

    def safe(self) -> bool:
        """At least LEASE_MARGIN of the lease is surely left (any thread)."""
        left = self.renewed_at + self.seconds - self._clock()
        return left >= self.seconds * LEASE_MARGIN

    def check(self) -> None:
        """Raise LeaseInDoubt unless the lease is safe (any thread)."""
        if not self.safe():
            raise LeaseInDoubt(self.workflow_id)

    async def holds(self) -> bool:
        """A step never starts on a lease that may be gone: with less than LEASE_MARGIN left
        (after a pause: a stopped process, a slow commit, a long GC) it is renewed first; if
        another processor took the run meanwhile, or the renewal fails, the step does not
        start here (the run resumes from its checkpoint wherever its lease is)."""
        if self.safe():
            return True
        try:
            if await self.renew():
                return True
            logger.warning(
                "%s: the lease moved to another processor before the next step; abandoning the run", self.workflow_id
            )
        except Exception as exc:
            logger.warning(
                "%s: cannot renew the lease before the next step (%s); not starting it",
                self.workflow_id,
                type(exc).__name__,
            )
        return False

    async def renew(self) -> bool:
        """Extend the lease if this processor still holds it (False: it was lost)."""
        renewing = self._clock()
        end = lease_end(utcnow(), self.seconds)
        kept = await self._renewal(end)
        metrics.LEASE_RENEWALS.labels("kept" if kept else "lost").inc()
        if kept:
            self.extended(renewing)
            logger.debug("%s: lease renewed until %s", self.workflow_id, end.isoformat())
        return kept

    async def keep(self) -> None:
        """Renew the lease whenever a third of it passes without a commit renewing it, so a
        slow cycle (or a long cycle delay) is not taken for a dead processor's. Returns when
        the lease is lost."""
        interval = self.seconds / 3
        while True:
            await asyncio.sleep(max(0.0, self.renewed_at + interval - self._clock()))
            if self._clock() - self.renewed_at < interval:
                continue
            try:
                kept = await self.renew()
            except Exception as exc:
                logger.warning(
                    "%s: renewing the lease failed; retrying",
                    self.workflow_id,
                    exc_info=not isinstance(exc, Unavailable),
                )
                await asyncio.sleep(min(1.0, interval))
                continue
            if not kept:
                logger.warning("%s: lease lost while the run was in progress", self.workflow_id)
                return

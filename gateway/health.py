"""What the gateway says about its own health, beyond `grpc.health.v1`: REST `/readyz`, and
the gauges only its database knows (read when Prometheus scrapes).

Ready means this gateway can take approvals: its database answers and its schema is at the
newest revision. The processor link is reported beside it, not folded in: while the processor
is away, approvals still commit and wait in the outbox, so the gateway stays ready (and its
`grpc.health.v1` reports the link as a service of its own).
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from auditflow import convert, metrics
from auditflow.db import Database
from auditflow.metrics import DatabaseCollector, Sample
from gateway import store
from gateway.feed import Feed


class Readiness:
    """The answer of REST `/readyz`, which anyone may ask without credentials: the probes
    asking while one is under way share its look at the database, so a flood of probes costs
    the database one read at a time, never one each."""

    def __init__(self, db: Database, feed: Feed) -> None:
        self._db = db
        self._feed = feed
        self._looking: asyncio.Task[str | None] | None = None

    async def check(self) -> tuple[bool, dict[str, str]]:
        """(ready, what was checked → "ok" or what is wrong)."""
        problem = await self._schema_problem()
        link = "ok" if self._feed.connected.is_set() else "not connected (approvals wait in the outbox)"
        return problem is None, {"database": problem or "ok", "processor": link}

    async def _schema_problem(self) -> str | None:
        if self._looking is None:
            self._looking = asyncio.create_task(self._db.schema_problem())
            self._looking.add_done_callback(self._looked)
        return await asyncio.shield(self._looking)  # (a probe that goes away leaves the look to the others)

    def _looked(self, look: asyncio.Task[str | None]) -> None:
        if self._looking is look:
            self._looking = None


OUTBOX_ROWS = "auditflow_gateway_outbox_rows"
OUTBOX_AGE = "auditflow_gateway_outbox_oldest_age_seconds"


def outbox_gauges(db: Database) -> DatabaseCollector:
    """Outbox rows waiting for the processor, and the age of the oldest (0 when none)."""

    def read() -> dict[str, list[Sample]]:
        count, oldest = db.read_blocking(store.outbox_backlog)
        return {OUTBOX_ROWS: [Sample((), count)], OUTBOX_AGE: [Sample((), _age(oldest))]}

    return metrics.DatabaseCollector(
        db.name,
        read,
        {
            OUTBOX_ROWS: ("Outbox rows waiting to be delivered to the processor.", ()),
            OUTBOX_AGE: ("Age of the oldest outbox row waiting (0 when none): how late dispatch runs.", ()),
        },
    )


def _age(oldest: datetime | None) -> float:
    return 0.0 if oldest is None else max(0.0, (convert.utcnow() - oldest).total_seconds())

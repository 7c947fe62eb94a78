"""What another gateway committed, for the watchers here.

Replicas share one database, and each has its own hub (`gateway.hub`). The processor's events
reach every replica through its own feed, but an event that only a gateway makes (a rejection,
a cancel while awaiting approval, a request for changes, a revision, one of several approvals)
is published only in the hub of the replica that committed it. A watcher of that workflow on
another replica would wait with heartbeats that say the old status, while GetStatus shows the
new one; and when this replica's feed is down, the same for the run's events that another
replica's feed mirrored.

So every `interval` seconds, while someone watches here, the crosscheck reads the row
positions of the workflows watched here whose end this hub has not seen (one query per
`CHUNK` of them). A row ahead of the hub is not yet a reason to act: this replica's own feed
or its own decision may have committed it and be about to publish it, and every replica's
feed mirrors the same processor events, some a moment before the others. A row found ahead
at two looks in a row is (`settled`): the hub is seeded with the lower of the two positions
(`WorkflowHub.seed`), which wakes the watchers, and they fill the log from the sources as
after a restart. An event committed elsewhere therefore reaches a watcher here within about
two intervals. A lone gateway pays one short read per interval while something is watched,
and nothing otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping

from auditflow.background import Background
from auditflow.db import Database
from gateway import store
from gateway.hub import WorkflowHub

logger = logging.getLogger(__name__)

CHUNK = 500  # workflows per query


def settled(before: Mapping[str, int], now: Mapping[str, int], published: Mapping[str, int]) -> dict[str, int]:
    """The workflows whose rows were ahead of the hub at both looks (`before`, `now`: {workflow:
    row position}, of the rows ahead at that look) and are still ahead of what the hub has
    `published`, with the lower of the two positions: {workflow: position to seed}."""
    found: dict[str, int] = {}
    for workflow_id, position in now.items():
        lower = min(position, before.get(workflow_id, 0))
        if lower > published.get(workflow_id, 0):
            found[workflow_id] = lower
    return found


class Crosscheck:
    """Seeds the hub with the position of watched rows that stay ahead of it."""

    def __init__(self, db: Database, hub: WorkflowHub, *, interval: float) -> None:
        self._db = db
        self._hub = hub
        self._interval = interval
        self._ahead: dict[str, int] = {}  # the rows found ahead of the hub at the last look
        self._task = Background("crosscheck")

    async def start(self) -> None:
        self._task.start(self._run)

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._look()
                failing = False
            except Exception:  # the database is away: the next look tries again
                if not failing:  # (one line per outage)
                    logger.warning("could not compare watched workflows with their rows", exc_info=True)
                    failing = True

    async def _look(self) -> None:
        watched = self._hub.watched_unfinished()
        rows: dict[str, int] = {}
        for start in range(0, len(watched), CHUNK):
            chunk = watched[start : start + CHUNK]
            rows.update(await self._db.read(functools.partial(store.positions, workflow_ids=chunk)))
        published = {w: self._hub.published(w) for w in rows}
        ahead = {w: last for w, last in rows.items() if last > published[w]}
        for workflow_id, position in settled(self._ahead, ahead, published).items():
            self._hub.seed(workflow_id, position)
        self._ahead = ahead

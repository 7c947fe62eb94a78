"""What another gateway committed, for the watchers here.

Replicas share one database, and each has its own hub (`gateway.hub`). The processor's events
reach every replica through its own feed, but an event that only a gateway makes (a rejection,
a cancel while awaiting approval, a request for changes, a revision, one of several approvals)
is published only in the hub of the replica that committed it. A watcher of that workflow on
another replica would wait with heartbeats that say the old status, while GetStatus shows the
new one; when the run is finished by another replica's feed while this one's is down, the same.

So every `interval` seconds, while someone watches here, one query reads the row positions of
the workflows watched here whose end this hub has not seen; where a row is ahead of the hub,
the hub is seeded with its position (`WorkflowHub.seed`), which wakes the watchers, and they
fill the log from the sources as after a restart. An event committed elsewhere therefore
reaches a watcher here within about `interval` seconds. A lone gateway pays one short read
per interval while something is watched, and nothing otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from auditflow.background import Background
from auditflow.db import Database
from gateway import store
from gateway.hub import WorkflowHub

logger = logging.getLogger(__name__)

CHUNK = 500  # workflows per query


class Crosscheck:
    """Seeds the hub with the position of watched rows that are ahead of it."""

    def __init__(self, db: Database, hub: WorkflowHub, *, interval: float) -> None:
        self._db = db
        self._hub = hub
        self._interval = interval
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
                await self.look()
                failing = False
            except Exception:  # the database is away: the next look tries again
                if not failing:  # (one line per outage)
                    logger.warning("could not compare watched workflows with their rows", exc_info=True)
                    failing = True

    async def look(self) -> int:
        """One comparison; how many workflows were found ahead of the hub."""
        watched = self._hub.watched_unfinished()
        ahead = 0
        for start in range(0, len(watched), CHUNK):
            chunk = watched[start : start + CHUNK]
            rows = await self._db.read(functools.partial(store.positions, workflow_ids=chunk))
            for workflow_id, last in rows.items():
                if last > self._hub.published(workflow_id):
                    self._hub.seed(workflow_id, last)
                    ahead += 1
        return ahead

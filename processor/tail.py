"""The events other processors commit to a shared database, into this processor's hub.

On PostgreSQL several processors share the runs and their logs, and a run's lease may move
from one to another. This processor's hub hears of its own commits at once; the tail looks
every `poll_interval` at the runs written in the last `window` seconds (a margin for clocks
and commits that land out of order), reads the events its hub has not published, and
publishes them. A notification (another processor committed) wakes it at once for a
shorter look: the runs written since its last look, less `LOOKBACK` seconds. A notification
comes after its commit, so that finds it, unless the writer's clock or a long transaction
stamped the run earlier than that; the full look, which still runs every `poll_interval`
whatever the notifications, finds those. A look costs in the number of runs it covers: at a
hundred runs a second, the 30-second window is thousands, the short one a few hundred.

So the feed (Follow) and every watcher here see every run, whoever drives it. The hub
ignores what it already published, and a gap the tail has not filled yet (another
processor's events, then this one's) is closed by the subscriber, who reads the log.

On SQLite a processor is alone with its file: every event passes through its hub, and the
tail does not run.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import datetime, timedelta

from auditflow.background import Background
from auditflow.convert import utcnow
from auditflow.db import Database
from auditflow.errors import Unavailable
from auditflow.waits import wait_for
from processor import messages, store

logger = logging.getLogger(__name__)

PAGE = 1000
MIN_SPACING = 0.02  # seconds between two reads, however often notifications come
LOOKBACK = timedelta(seconds=2)  # what a look on a notification covers before the last look


class Tail:
    def __init__(self, db: Database, hub: messages.Broadcast, *, poll_interval: float, window: float = 30.0) -> None:
        self._db = db
        self._hub = hub
        self._interval = poll_interval
        self._window = timedelta(seconds=window)
        self._task = Background("tail")
        self._woken = asyncio.Event()
        self.reads = 0  # looks at the runs written lately (for tests and benchmarks)

    def wake(self) -> None:
        """Another processor committed events (a notification): read them now."""
        self._woken.set()

    async def start(self) -> None:
        if not self._db.is_sqlite:
            self._task.start(self._run)

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        full_since = last_since = utcnow() - self._window
        full_at = asyncio.get_running_loop().time()
        woken = False
        while True:
            started, now = utcnow(), asyncio.get_running_loop().time()
            full = not woken or now - full_at >= self._interval
            try:
                await self.poll(full_since if full else last_since - LOOKBACK)
                last_since = started
                if full:
                    full_since, full_at = started - self._window, now
            except Unavailable:
                pass  # (the database says so in the log, once per outage)
            except Exception:
                logger.warning("reading other processors' events failed; retrying", exc_info=True)
            await asyncio.sleep(MIN_SPACING)  # (notifications in a burst: one read for them all)
            woken = await wait_for(self._woken, max(0.0, full_at + self._interval - asyncio.get_running_loop().time()))
            self._woken.clear()

    async def poll(self, since: datetime) -> int:
        """Publish what changed since `since` and this hub has not published; the count."""
        changed = await self._db.read(functools.partial(store.changed_since, since=since))
        self.reads += 1
        cursors = [
            store.EventCursor(wid, self._hub.published(wid))
            for wid, last in changed.items()
            if last > self._hub.published(wid)
        ]
        published = 0
        for start in range(0, len(cursors), PAGE):
            chunk = cursors[start : start + PAGE]
            while chunk:
                read = functools.partial(store.events_after_cursors, cursors=chunk, limit=PAGE)
                records, truncated = await self._db.scan(read)
                messages.publish(self._hub, records)
                published += len(records)
                chunk = (
                    [store.EventCursor(c.workflow_id, self._hub.published(c.workflow_id)) for c in chunk]
                    if truncated
                    else []
                )
        return published

"""LISTEN/NOTIFY between processors sharing a PostgreSQL database.

A commit that appends events, or leaves a run claimable (queued where no slot was free,
or a lease released), also sends a notification on `CHANNEL` (sent by PostgreSQL at commit,
coalesced within a transaction; `store.notify`). A run claimed in the transaction that
inserts it is not announced: no other processor has anything to claim. Every processor
listens on a connection of its own, in a thread of its own (a blocking wait never runs on
the event loop), and on a notification wakes, on its event loop, what waits for it: the
scheduler for a new run (an idle processor claims at once) and the tail for new events (so
the feed and watchers here get events committed by another processor at once).

Polling stays, every `--poll-interval`, as the fallback: a notification can be lost (the
listening connection breaks, a connection pooler drops LISTEN), and then the processor works
as before until it listens again. The log says which mode is active.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Collection, Mapping

from sqlalchemy.engine import make_url

from auditflow.backoff import Backoff

logger = logging.getLogger(__name__)

CHANNEL = "auditflow_processor"
RUNS = "runs"  # a run was queued (or released): claim
EVENTS = "events"  # events were appended: read them


class Listener:
    """Calls `handlers[payload]()` on the event loop for every notification on `CHANNEL`."""

    def __init__(
        self,
        database_url: str,
        handlers: Mapping[str, Callable[[], None]],
        *,
        poll_interval: float,
        own: Collection[int] = (),
    ) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        # Server processes of this processor's own connections: what they commit, this
        # processor knows already (waking on it cost a claim look-up and a tail read per commit).
        self._own = own
        self._conninfo = url.render_as_string(hide_password=False)  # (never logged)
        self._handlers = handlers
        self._poll_interval = poll_interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listening = threading.Event()  # set while notifications are heard

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
            self._thread = None

    def _run(self) -> None:
        import psycopg  # (only on PostgreSQL, whose driver is an optional dependency)

        backoff = Backoff(maximum=5.0)
        warned = False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    logger.info(
                        "LISTEN/NOTIFY active: new runs and other processors' events wake this one "
                        "at once (polling every %.1f s as a fallback)",
                        self._poll_interval,
                    )
                    self.listening.set()
                    warned = False
                    backoff.reset()
                    self._wake_all()  # (whatever happened while not listening)
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=0.5):
                            if note.pid not in self._own:
                                self._wake(note.payload)
            except Exception as exc:  # the connection failed or broke: poll meanwhile, and retry
                self.listening.clear()
                if not warned:
                    logger.warning(
                        "LISTEN/NOTIFY unavailable (%s); polling every %.1f s until it is back",
                        type(exc).__name__,
                        self._poll_interval,
                    )
                    warned = True
                self._stopping.wait(backoff.next())

    def _wake(self, payload: str) -> None:
        handler = self._handlers.get(payload)
        if handler is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(handler)

    def _wake_all(self) -> None:
        for payload in self._handlers:
            self._wake(payload)

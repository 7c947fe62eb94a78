"""What the gateway holds in memory of each workflow's log, for its watchers.

Every event the gateway commits (created, decided, cancelled) and every event the feed brings
from the processor is published here once, as an `Item`: the WatchStatusResponse and its
encodings (the gRPC wire bytes, the SSE and NDJSON lines), made once and shared by every
watcher of the workflow. A thousand watchers of one run cost one encoding per event, and a
watcher holds only its position.

A workflow's log is kept contiguous (sequence after sequence) and bounded: up to `HELD` items
while someone watches it, up to `KEPT` otherwise (the newest). A watcher that needs what the
log no longer holds (it joined late, or fell behind) has the log filled from the sources
(`gateway.watch`), once for all the watchers waiting on it. Logs of finished workflows that
nobody watches are dropped after `EVICT_AFTER` seconds; the position (`published`) of an
unfinished one is kept, so that the feed knows what it has delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from auditflow.statuses import PROCESSING
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway.encoded import Encoded, message_json

HELD = 1024
KEPT = 32
EVICT_AFTER = 60.0


class Item(Encoded):
    """One message for the watchers of a workflow, built (`later`) and encoded at most once
    per encoding."""

    __slots__ = ("_build", "_message", "sequence", "terminal", "workflow_id")

    def __init__(self, message: wpb.WatchStatusResponse) -> None:
        super().__init__()
        self._message: wpb.WatchStatusResponse | None = message
        self._build: Callable[[], wpb.WatchStatusResponse] | None = None
        self.workflow_id = message.event.workflow_id or message.snapshot.workflow_id
        self.sequence = message.event.sequence if message.HasField("event") else 0
        self.terminal = message.HasField("event") and message.snapshot.is_completed

    @classmethod
    def event(cls, event: pb.WorkflowEvent, snapshot: pb.StatusSnapshot) -> Item:
        return cls(wpb.WatchStatusResponse(event=event, snapshot=snapshot))

    @classmethod
    def later(
        cls, workflow_id: str, sequence: int, terminal: bool, build: Callable[[], wpb.WatchStatusResponse]
    ) -> Item:
        """An event whose message is built only if someone reads it: an Approve nobody
        watches pays for no snapshot."""
        item = cls.__new__(cls)
        Encoded.__init__(item)
        item._message, item._build = None, build
        item.workflow_id, item.sequence, item.terminal = workflow_id, sequence, terminal
        return item

    @classmethod
    def heartbeat(cls, snapshot: pb.StatusSnapshot, now: pb.Heartbeat) -> Item:
        return cls(wpb.WatchStatusResponse(heartbeat=now, snapshot=snapshot))

    @property
    def message(self) -> wpb.WatchStatusResponse:
        if self._message is None:
            assert self._build is not None
            self._message, self._build = self._build(), None
        return self._message

    @property
    def ends(self) -> bool:
        return self.terminal

    def _event(self) -> bytes:
        """`id:` is the sequence; a heartbeat is a comment."""
        if self.sequence == 0:
            return b": heartbeat\n\n"
        return f"id: {self.sequence}\ndata: {message_json(self.message)}\n\n".encode()


@dataclass
class _Log:
    items: deque[Item] = field(default_factory=lambda: deque(maxlen=KEPT))
    # The newest sequence published: committed by the gateway, or mirrored by the feed (its
    # position). Watchers see nothing past it. A fill may hold more: read from the processor
    # before the feed brought it, it is not on the workflow row yet; the feed still mirrors
    # it, and its publish shows it to the watchers.
    last: int = 0
    newest: Item | None = None  # the newest event (its snapshot is the latest status)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    watchers: int = 0
    ended_at: float | None = None
    filling: asyncio.Future[None] | None = None
    beats: int = 0  # idle wake-ups so far (`beat_after`)
    ticker: asyncio.TimerHandle | None = None  # the next idle wake-up, if one is due


class PublishListener(Protocol):
    """Told of every workflow whose event was published (the collection watch's broker)."""

    def changed(self, workflow_id: str) -> None: ...


class WorkflowHub:
    """The logs and the wake-ups of every workflow the gateway hears of. Event loop only."""

    def __init__(self) -> None:
        self._logs: dict[str, _Log] = {}
        self._swept_at = time.monotonic()
        self._listeners: list[PublishListener] = []
        self._watched: dict[str, _Log] = {}  # the logs someone watches

    def add_listener(self, listener: PublishListener) -> None:
        self._listeners.append(listener)

    def publish(self, item: Item) -> None:
        """An event is committed (here, or at the processor and mirrored here): keep it and
        wake the watchers. A sequence published before is ignored; one past a gap restarts
        the log there (a watcher needing the gap has it filled)."""
        self.publish_all((item,))

    def publish_all(self, items: Sequence[Item]) -> None:
        """Events committed together, in order: each workflow's watchers are woken once for
        all of its events, and find them all at that wake-up (one write on SSE and NDJSON,
        one wake-up of the listeners), rather than once per event."""
        woken: dict[str, _Log] = {}
        for item in items:
            log = self._append(item)
            if log is not None:
                woken[item.workflow_id] = log
        for workflow_id, log in woken.items():
            self._wake(log)
            for listener in self._listeners:
                listener.changed(workflow_id)
        if woken:
            self._sweep()

    def _append(self, item: Item) -> _Log | None:
        """Keep one event in its workflow's log; the log, or None if it was published before."""
        log = self._logs.get(item.workflow_id)
        if log is None:
            log = self._logs[item.workflow_id] = _Log()
        if item.sequence <= log.last:
            return None
        held = bool(log.items) and item.sequence <= log.items[-1].sequence  # (a fill read it first)
        if not held:
            if log.items and item.sequence != log.items[-1].sequence + 1:
                log.items.clear()
            log.items.append(item)
        log.last = item.sequence
        log.newest = item
        if item.terminal:
            log.ended_at = time.monotonic()
        return log

    def published(self, workflow_id: str) -> int:
        """The newest sequence published for a workflow, by the gateway or the feed (0 if none
        is known): the feed's position."""
        log = self._logs.get(workflow_id)
        return 0 if log is None else log.last

    def unfinished(self) -> list[str]:
        """Workflows whose run this log has seen start but not end: after a broken feed, the
        feed reads what it missed of them even when another gateway has mirrored their end."""
        return [
            w
            for w, log in self._logs.items()
            if log.ended_at is None and log.newest is not None and log.newest.message.snapshot.status in PROCESSING
        ]

    def watched_unfinished(self) -> list[str]:
        """Workflows someone watches whose end this log has not seen (`gateway.crosscheck`)."""
        return [w for w, log in self._watched.items() if log.ended_at is None]

    def seed(self, workflow_id: str, last: int) -> None:
        """Know a workflow's position without its events: the mirror may be ahead of this log
        (the feed's catch-up: a feed session broke between its write and its publish; the
        crosscheck: another gateway committed). Watchers are woken: what they wait for is now
        read from the sources."""
        log = self._logs.setdefault(workflow_id, _Log())
        if last > log.last:
            log.last = last
            self._wake(log)

    def after(self, workflow_id: str, after: int) -> list[Item] | None:
        """The items after `after` if the log holds all of them, else None (fill it)."""
        log = self._logs.get(workflow_id)
        if log is None:
            return None
        if not log.items:  # a position without events: caught up, or nothing known yet
            return [] if 0 < log.last <= after else None
        if after + 1 < log.items[0].sequence:
            return None
        if log.items[-1].sequence < log.last and after < log.last:
            return None  # known to go further than it holds (a seeded position): fill it
        newer: list[Item] = []  # from the end: a watcher is rarely far behind a log of HELD items
        for item in reversed(log.items):
            if item.sequence <= after:
                break
            if item.sequence <= log.last:
                newer.append(item)
        newer.reverse()
        return newer

    def position(self, workflow_id: str) -> tuple[int, bool] | None:
        """The newest sequence published and whether that event ends the run, when the log
        knows that event (None: never published here, or only its position is known)."""
        log = self._logs.get(workflow_id)
        if log is None or log.newest is None or log.newest.sequence != log.last:
            return None
        return log.last, log.newest.terminal

    def latest(self, workflow_id: str) -> pb.StatusSnapshot | None:
        log = self._logs.get(workflow_id)
        return None if log is None or log.newest is None else log.newest.message.snapshot

    async def fill(self, workflow_id: str, read: Callable[[], Awaitable[tuple[list[Item], int]]]) -> None:
        """Fill the log from the sources, once for all the watchers that need it at the same
        time. `read` gives the whole log, oldest first, and how far the workflow's row is
        mirrored: the position moves to there, not further. What the sources had beyond it
        waits for the feed, which mirrors it and then publishes it (had the fill moved the
        position, the feed would skip those events, and the row would never show them)."""
        log = self._logs.setdefault(workflow_id, _Log())
        if log.filling is not None:
            await asyncio.shield(log.filling)
            return
        log.filling = asyncio.get_running_loop().create_future()
        try:
            items, mirrored = await read()
            log.last = max(log.last, mirrored)
            newer = [item for item in log.items if not items or item.sequence > items[-1].sequence]
            merged = [*items, *newer]
            log.items = deque(merged, maxlen=log.items.maxlen)
            shown = next((item for item in reversed(merged) if item.sequence <= log.last), None)
            if shown is not None and (log.newest is None or shown.sequence > log.newest.sequence):
                log.newest = shown
                if shown.terminal and log.ended_at is None:
                    log.ended_at = time.monotonic()
            self._wake(log)  # (watchers waiting at the end of the log may have more to read)
            log.filling.set_result(None)
        except BaseException as exc:
            log.filling.set_exception(exc)
            log.filling.exception()  # (retrieved: the waiters get it through shield)
            raise
        finally:
            log.filling = None

    # --- watchers ---------------------------------------------------------------------------

    def subscribe(self, workflow_id: str) -> None:
        log = self._logs.setdefault(workflow_id, _Log())
        log.watchers += 1
        self._watched[workflow_id] = log
        if log.items.maxlen != HELD:  # watched: keep more, so that late joiners read memory
            log.items = deque(log.items, maxlen=HELD)

    def unsubscribe(self, workflow_id: str) -> None:
        log = self._logs.get(workflow_id)
        if log is None:
            return
        log.watchers -= 1
        if log.watchers <= 0:
            log.watchers = 0
            self._watched.pop(workflow_id, None)
            log.items = deque(log.items, maxlen=KEPT)
            _stop_ticker(log)

    def waiter(self, workflow_id: str) -> asyncio.Event:
        """The event the next publish or wake sets. Take it before reading, then wait for it,
        so that a change between the read and the wait is never missed (while subscribed)."""
        log = self._logs.get(workflow_id)
        if log is None:  # (not `setdefault`: no new log made and dropped per delivery)
            log = self._logs[workflow_id] = _Log()
        return log.changed

    def beat_after(self, workflow_id: str, idle: float) -> int:
        """Have the workflow's watchers woken `idle` seconds after its last wake, unless one
        is due already, and say how many such idle wake-ups there have been: a watcher woken
        with nothing new, and a count that moved, sends a heartbeat. One timer per workflow,
        shared by all its watchers, rather than a timeout per watcher per wait. While
        subscribed."""
        log = self._logs[workflow_id]
        if log.ticker is None:
            log.ticker = asyncio.get_running_loop().call_later(idle, self._beat, log)
        return log.beats

    def beats(self, workflow_id: str) -> int:
        """The idle wake-ups of a workflow so far (`beat_after`)."""
        log = self._logs.get(workflow_id)
        return 0 if log is None else log.beats

    @classmethod
    def _beat(cls, log: _Log) -> None:
        log.ticker = None
        log.beats += 1
        cls._wake(log)

    @staticmethod
    def _wake(log: _Log) -> None:
        log.changed.set()
        log.changed = asyncio.Event()
        _stop_ticker(log)  # (the next idle wake-up counts from now)

    @property
    def workflows(self) -> int:
        return len(self._logs)

    @property
    def watched(self) -> int:
        return len(self._watched)

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._swept_at < EVICT_AFTER / 4:
            return
        self._swept_at = now
        done = [
            w
            for w, log in self._logs.items()
            if log.watchers == 0 and log.ended_at is not None and now - log.ended_at > EVICT_AFTER
        ]
        for workflow_id in done:
            del self._logs[workflow_id]


def _stop_ticker(log: _Log) -> None:
    if log.ticker is not None:
        log.ticker.cancel()
        log.ticker = None

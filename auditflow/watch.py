"""Live notification of new events, within one process.

The event log in the database is the source of truth; this hub says "workflow X has events
up to sequence N" so that watchers wake up and read what they have not seen, and keeps the
newest events of each workflow it holds a channel for, so that many watchers of one run read
each new event from memory. A slow watcher never makes anyone buffer: it keeps only its
position, and reads from the log what the cache no longer holds.

Besides the per-workflow channels, a feed subscriber (`follow`) gets every event published,
for every workflow, in publish order, in a bounded buffer: a subscriber that falls more than
its limit behind is cut (`overflowed`) and must catch up from the log. Publishing the same
sequence twice (the processor's own commit, then the database tail that sees it) is a no-op.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

E = TypeVar("E")
CACHE_SIZE = 256
FORGET_AFTER = 120.0  # seconds a finished workflow's last sequence is remembered (duplicates)
FORGET_IDLE = 3600.0  # seconds an unfinished one is, with no event (its run moved elsewhere)


@dataclass
class _Channel(Generic[E]):
    last_sequence: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    recent: deque[tuple[int, E]] = field(default_factory=lambda: deque(maxlen=CACHE_SIZE))
    watchers: int = 0


@dataclass(eq=False)  # (identity: subscribers are kept in a set)
class Feed(Generic[E]):
    """One subscriber to every event: `take()` what is waiting, `wait()` for more."""

    limit: int
    items: deque[tuple[str, int, E]] = field(default_factory=deque)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False

    def push(self, workflow_id: str, sequence: int, event: E) -> None:
        if self.overflowed:
            return
        if len(self.items) >= self.limit:
            self.overflowed = True
            self.items.clear()
        else:
            self.items.append((workflow_id, sequence, event))
        self.changed.set()

    def take(self) -> list[tuple[str, int, E]]:
        taken = list(self.items)
        self.items.clear()
        self.changed.clear()
        return taken


class EventHub(Generic[E]):
    """Per-workflow wake-ups, a cache of the newest events, and feed subscribers. Use on the
    event loop only."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel[E]] = {}
        self._feeds: set[Feed[E]] = set()
        # Last sequence published per workflow, when, and whether it was the terminal one.
        self._published: dict[str, tuple[int, float, bool]] = {}
        self._pruned_at = time.monotonic()

    def publish(self, workflow_id: str, sequence: int, event: E, *, final: bool = False) -> None:
        """Record that `event` with `sequence` is committed, and wake its watchers; `final`
        when it is the workflow's terminal event. A sequence already published is ignored."""
        known = self._published.get(workflow_id)
        if known is not None and sequence <= known[0]:
            return
        self._published[workflow_id] = (sequence, time.monotonic(), final)
        for feed in self._feeds:
            feed.push(workflow_id, sequence, event)
        channel = self._channels.get(workflow_id)
        if channel is not None:
            if channel.recent and sequence != channel.recent[-1][0] + 1:
                channel.recent.clear()  # keep the cache contiguous; watchers fall back to the log
            channel.recent.append((sequence, event))
            channel.last_sequence = max(channel.last_sequence, sequence)
            self._wake(channel)
        self._prune()

    def published(self, workflow_id: str) -> int:
        """The last sequence published for a workflow (0 if none, or forgotten)."""
        known = self._published.get(workflow_id)
        return 0 if known is None else known[0]

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at < FORGET_AFTER / 4:
            return
        self._pruned_at = now
        stale = [
            w for w, (_seq, at, final) in self._published.items()
            if now - at > (FORGET_AFTER if final else FORGET_IDLE)
        ]  # fmt: skip
        for workflow_id in stale:
            del self._published[workflow_id]

    def follow(self, limit: int) -> Feed[E]:
        """A subscriber to every event from now on (at most `limit` waiting)."""
        feed: Feed[E] = Feed(limit)
        self._feeds.add(feed)
        return feed

    def unfollow(self, feed: Feed[E]) -> None:
        self._feeds.discard(feed)

    @property
    def followers(self) -> int:
        return len(self._feeds)

    def wake(self, workflow_id: str) -> None:
        """Wake the watchers of a workflow whose state changed without a new event here."""
        channel = self._channels.get(workflow_id)
        if channel is not None:
            self._wake(channel)

    @staticmethod
    def _wake(channel: _Channel[E]) -> None:
        channel.changed.set()
        channel.changed = asyncio.Event()

    def cached_after(self, workflow_id: str, after: int) -> list[E] | None:
        """Events after `after` if the cache holds all of them, else None (read the log)."""
        channel = self._channels.get(workflow_id)
        if channel is None or not channel.recent:
            return None
        first = channel.recent[0][0]
        if after + 1 < first:
            return None
        return [event for seq, event in channel.recent if seq > after]

    @property
    def watched(self) -> int:
        """Workflows with at least one watcher."""
        return len(self._channels)

    def subscribe(self, workflow_id: str) -> None:
        self._channels.setdefault(workflow_id, _Channel()).watchers += 1

    def unsubscribe(self, workflow_id: str) -> None:
        channel = self._channels.get(workflow_id)
        if channel is None:
            return
        channel.watchers -= 1
        if channel.watchers <= 0:
            del self._channels[workflow_id]

    def waiter(self, workflow_id: str) -> asyncio.Event:
        """The event the next publish or wake sets. Take it before reading state, then
        `wait_for` it, so that a change between the read and the wait is never missed.
        Only between `subscribe` and `unsubscribe`: a channel is freed with its last watcher."""
        channel = self._channels.get(workflow_id)
        if channel is None:
            raise RuntimeError(f"waiter({workflow_id!r}) without subscribe()")
        return channel.changed

    async def wait(self, workflow_id: str, after: int, timeout: float) -> bool:
        """Wait for an event after `after` (or a wake); False if `timeout` seconds passed."""
        channel = self._channels.get(workflow_id)
        if channel is None or channel.last_sequence > after:
            return True
        return await wait_for(channel.changed, timeout)


async def wait_for(event: asyncio.Event, timeout: float) -> bool:
    """Wait for a `waiter` event; False if `timeout` seconds passed first. (`asyncio.timeout`,
    not `wait_for`: no task of its own per wait, which a thousand watchers feel.)"""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True

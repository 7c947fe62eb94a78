"""The processor's live events, within one process: its watchers' wake-ups and its followers.

The event log in the database is the source of truth; this broadcast says "workflow X has events
up to sequence N" so that watchers wake up and read what they have not seen, and keeps the
newest events of each workflow it holds a channel for, so that many watchers of one run read
each new event from memory. A slow watcher never makes anyone buffer: it keeps only its
position, and reads from the log what the cache no longer holds.

Besides the per-workflow channels, a follower (`follow`: a gateway's Follow stream) gets every
event published, for every workflow, in publish order, in a bounded queue: a follower that
falls more than its limit behind is cut (`overflowed`) and must catch up from the log. Publishing the same
sequence twice (the processor's own commit, then the database tail that sees it) is a no-op.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from auditflow.waits import wait_for

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


@dataclass(eq=False)  # (identity: followers are kept in a set)
class FollowQueue(Generic[E]):
    """One follower's events, bounded: `take()` what is waiting, wait on `changed` for more."""

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


class EventBroadcast(Generic[E]):
    """Per-workflow wake-ups, a cache of the newest events, and followers. Use on the event
    loop only."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel[E]] = {}
        self._followers: set[FollowQueue[E]] = set()
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
        for follower in self._followers:
            follower.push(workflow_id, sequence, event)
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
            w for w, (_seq, at, final) in self._published.items() if now - at > (FORGET_AFTER if final else FORGET_IDLE)
        ]
        for workflow_id in stale:
            del self._published[workflow_id]

    def follow(self, limit: int) -> FollowQueue[E]:
        """A follower of every event from now on (at most `limit` waiting)."""
        follower: FollowQueue[E] = FollowQueue(limit)
        self._followers.add(follower)
        return follower

    def unfollow(self, follower: FollowQueue[E]) -> None:
        self._followers.discard(follower)

    @property
    def followers(self) -> int:
        return len(self._followers)

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

    async def wait(self, workflow_id: str, after: int, timeout: float) -> bool:
        """Wait for an event after `after` (or a wake); False if `timeout` seconds passed."""
        channel = self._channels.get(workflow_id)
        if channel is None or channel.last_sequence > after:
            return True
        return await wait_for(channel.changed, timeout)

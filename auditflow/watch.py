"""Live notification of new events, within one process.

The event log in the database is the source of truth; this hub only says "workflow X has
events up to sequence N" (or "look again") so that watchers wake up and read what they have
not seen. A slow watcher therefore never makes anyone buffer: it reads from the log at its
own pace. While anyone watches a workflow, its recent events are also kept in a small cache,
so that a hundred watchers of one run read each new event from memory, not the database.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

E = TypeVar("E")
CACHE_SIZE = 256


@dataclass
class _Channel(Generic[E]):
    last_sequence: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    recent: deque[tuple[int, E]] = field(default_factory=lambda: deque(maxlen=CACHE_SIZE))
    watchers: int = 0


class EventHub(Generic[E]):
    """Per-workflow wake-ups plus a cache of the newest events. Use on the event loop only."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel[E]] = {}

    def publish(self, workflow_id: str, sequence: int, event: E) -> None:
        """Record that `event` with `sequence` is committed, and wake the watchers."""
        channel = self._channels.get(workflow_id)
        if channel is None:
            return  # nobody watches: nothing to cache
        if channel.recent and sequence != channel.recent[-1][0] + 1:
            channel.recent.clear()  # keep the cache contiguous; watchers fall back to the log
        channel.recent.append((sequence, event))
        channel.last_sequence = max(channel.last_sequence, sequence)
        self._wake(channel)

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
        try:
            await asyncio.wait_for(channel.changed.wait(), timeout)
        except TimeoutError:
            return False
        return True


async def wait_for(event: asyncio.Event, timeout: float) -> bool:
    """Wait for a `waiter` event; False if `timeout` seconds passed first."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True

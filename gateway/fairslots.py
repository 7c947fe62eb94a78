"""Fair turns at a few slots: one principal's many requests cannot keep another's waiting.

The page workers (`gateway.pageworkers`) build a page at a time each. Taken first come first
served, a principal that asks for page after page keeps every worker busy and queues each of
its next pages ahead of anyone else's. Here each principal waits in a queue of its own, and a
freed slot goes to the principals in turn (round robin, as the writer's `auditflow.fairwrites`
takes writes): someone else's page waits for at most one page of each principal ahead of it.
"""

from __future__ import annotations

import asyncio
import collections


class FairSlots:
    """At most `size` holders at once; waiters served one principal at a time, in turn.

    Single event loop (not thread-safe): `acquire` and `release` run on it."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"at least one slot, not {size}")
        self._free = size
        # Each principal's waiters, in the order of their turns (a dict keeps insertion order).
        self._waiting: dict[str, collections.deque[asyncio.Future[None]]] = {}

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return sum(len(queue) for queue in self._waiting.values())

    async def acquire(self, key: str) -> None:
        """Wait for a slot (the caller must `release` it); `key` names the principal."""
        if self._free > 0:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, collections.deque()).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # (given a slot as it was cancelled: the next one takes it)
            else:
                self._forget(key, waiter)
            raise

    def release(self) -> None:
        """Give the slot to the next principal's oldest waiter (that principal then goes to the
        back of the turns), or free it."""
        while self._waiting:
            key = next(iter(self._waiting))
            queue = self._waiting.pop(key)
            waiter = queue.popleft()
            if queue:
                self._waiting[key] = queue
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def _forget(self, key: str, waiter: asyncio.Future[None]) -> None:
        queue = self._waiting.get(key)
        if queue is None:
            return
        try:
            queue.remove(waiter)
        except ValueError:
            return
        if not queue:
            del self._waiting[key]

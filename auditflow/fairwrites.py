"""Fair shares of the database writer: one principal's writes cannot hold up another's.

The writer (`auditflow.db`) commits every waiting write in one transaction, so a write waits
for the batch in progress and then for its own batch. Taken first come first served, one
principal that sends many large writes at once (its largest plans, as fast as its rate
allows) fills both batches, and another principal's Approve waits for all of them: the
Kubernetes API server's Priority and Fairness met the same problem, and answers it with a
queue per flow taken in turn. So does this queue:

- each principal's writes wait in a queue of their own, and a batch takes from the queues in
  turn (round robin), so a new principal's write is in the next batch whatever is waiting;
- each principal may put at most `share` bytes of writes (their `cost`: a plan's size, a
  small default for the rest) into one batch, and always one write: another principal's
  write then waits for at most one batch share of anyone's, never for a whole backlog;
- the service's own work (no principal: the feed from the processor, the outbox relay) is
  not held back: it is what moves every principal's workflows on.

It is a drop-in for the writer's `queue.SimpleQueue` (`put`, `get`, `get_nowait`), and
records how long each principal's writes waited (`waits`, `summary()`): the figures that show
whether the writer is fair.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from auditflow import principal

# A principal's writes in one batch, in bytes of cost: the largest plan the default limits
# allow (64 KB), so a batch holds at most one such plan of each principal.
DEFAULT_SHARE = 64 * 1024
SERVICE = ""  # (the key of the service's own writes, which carry no principal)
MAX_RECORDED = 1_000  # principals whose waits are recorded (memory stays bounded)


# Waits are counted in buckets whose bounds grow by a fifth, from 50 µs: a percentile within 20 %.
FIRST_BOUND, GROWTH, BUCKETS = 50e-6, 1.2, 80


@dataclass
class Waited:
    """How long one principal's writes waited for the writer (seconds)."""

    writes: int = 0
    total: float = 0.0
    longest: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    def add(self, seconds: float) -> None:
        self.writes += 1
        self.total += seconds
        self.longest = max(self.longest, seconds)
        ratio = seconds / FIRST_BOUND
        self.buckets[0 if ratio <= 1 else min(BUCKETS - 1, math.ceil(math.log(ratio, GROWTH)))] += 1

    def percentile(self, share: float) -> float:
        """The wait `share` of the writes stayed within (an upper bound, within 20 %)."""
        wanted, seen = share * self.writes, 0
        for number, count in enumerate(self.buckets):
            seen += count
            if seen >= wanted:
                return min(self.longest, FIRST_BOUND * GROWTH**number)
        return self.longest


class FairWrites:
    """The writer's queue, in turns by principal (see the module's docstring)."""

    def __init__(self, share: int = DEFAULT_SHARE) -> None:
        """`share`: bytes of cost per principal per batch (0: none; a batch takes every write
        waiting, as a first-come-first-served queue does)."""
        self._share = share
        self._queues: collections.OrderedDict[str, collections.deque[tuple[Any, float]]] = collections.OrderedDict()
        self._taken: dict[str, int] = {}  # cost each principal put into the batch being formed
        self._ready = threading.Condition()
        self._stopping = False
        self.waits: dict[str, Waited] = {}

    def put(self, item: Any) -> None:
        """Queue a write (from the caller's task: its principal is the current one); None
        tells the writer to stop once the writes queued before it are taken."""
        with self._ready:
            if item is None:
                self._stopping = True
            else:
                caller = principal.current_or_none()
                key = caller.key if caller is not None else SERVICE
                self._queues.setdefault(key, collections.deque()).append((item, time.monotonic()))
            self._ready.notify()

    def waiting(self) -> int:
        """How many writes wait for the writer."""
        with self._ready:
            return sum(len(waiting) for waiting in self._queues.values())

    def get(self) -> Any:
        """The first write of a new batch (blocking), or None to stop."""
        with self._ready:
            while not self._queues:
                if self._stopping:
                    return None
                self._ready.wait()
            self._taken.clear()
            return self._next()

    def get_nowait(self) -> Any:
        """The next write of the batch being formed; queue.Empty when every waiting principal
        has put its share in it."""
        with self._ready:
            item = self._next()
            if item is None:
                raise queue.Empty
            return item

    def _next(self) -> Any:
        """Take from the queues in turn, skipping a principal whose share is used up."""
        for key in list(self._queues):
            waiting = self._queues[key]
            cost = getattr(waiting[0][0], "cost", 0)
            taken = self._taken.get(key)
            if self._share and key != SERVICE and taken is not None and taken + cost > self._share:
                continue
            item, since = waiting.popleft()
            self._taken[key] = (taken or 0) + cost
            self._record(key, time.monotonic() - since)
            del self._queues[key]
            if waiting:
                self._queues[key] = waiting  # (to the back of the line)
            return item
        return None

    def _record(self, key: str, seconds: float) -> None:
        waited = self.waits.get(key)
        if waited is None:
            if len(self.waits) >= MAX_RECORDED:
                return
            waited = self.waits[key] = Waited()
        waited.add(seconds)

    def summary(self, most: int = 8) -> str:
        """The principals whose writes waited longest (by their 99th percentile): writes, and
        the mean, 99th percentile and longest wait."""
        with self._ready:
            ranked = sorted(self.waits.items(), key=lambda entry: entry[1].percentile(0.99), reverse=True)[:most]
        return "; ".join(
            f"{key or '(the service)'} {w.writes} writes, mean {w.total / w.writes * 1000:.1f} ms, "
            f"p99 {w.percentile(0.99) * 1000:.1f} ms, longest {w.longest * 1000:.1f} ms"
            for key, w in ranked
        )

"""The garbage collector and the objects a server makes at start-up.

A server starts with some 100,000 long-lived objects (modules, generated message classes,
SQLAlchemy's tables and compiled statements, gRPC's handlers). CPython's full (generation 2)
collection walks all of them each time it runs, and it runs on whichever thread happens to
allocate: on the event loop that is a pause of 80 to 160 ms, the longest wait an Approve
beside a busy principal saw. None of those objects is ever garbage, so once the server has
started they are collected once and then frozen (`gc.freeze`): they leave the collector's
generations, and a full collection walks only what was made since (`bench/heap.py`).

What is made since is no garbage either, mostly: the in-memory logs of the workflows a server
serves. The interpreter's default tries a full collection every 10 collections of the middle
generation: one or two ran in each 3-minute run of `bench/fairness.py`, 24 to 104 ms over
those logs. After the freeze, a full collection waits for 100 of them instead (`FULL_EVERY`):
none ran in the same runs (docs/benchmarks.md), and cyclic garbage old enough for the last
generation waits longer to be freed.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)
FULL_EVERY = 100  # collections of the middle generation between two full ones (default: 10)


def freeze_start_up() -> int:
    """Collect what start-up left as garbage, then move every object alive now out of the
    collector's reach, and have full collections come less often; the number of objects
    frozen. Blocking (a full collection): call it off the event loop (`asyncio.to_thread`),
    once the server has started."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_EVERY)
    frozen = gc.get_freeze_count()
    logger.debug("%d start-up objects frozen out of the garbage collector", frozen)
    return frozen

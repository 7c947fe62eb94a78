"""The garbage collector and the objects a server makes at start-up.

A server starts with some 100,000 long-lived objects (modules, generated message classes,
SQLAlchemy's tables and compiled statements, gRPC's handlers). CPython's full (generation 2)
collection walks all of them each time it runs, and it runs on whichever thread happens to
allocate: on the event loop that is a pause of 80 to 160 ms, the longest wait an Approve
beside a busy principal saw. None of those objects is ever garbage, so once the server has
started they are collected once and then frozen (`gc.freeze`): they leave the collector's
generations, and a full collection walks only what was made since (`bench/heap.py`).
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_start_up() -> int:
    """Collect what start-up left as garbage, then move every object alive now out of the
    collector's reach; the number of objects frozen. Blocking (a full collection): call it
    off the event loop (`asyncio.to_thread`), once the server has started."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("%d start-up objects frozen out of the garbage collector", frozen)
    return frozen

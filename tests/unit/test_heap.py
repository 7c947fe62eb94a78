"""Start-up objects frozen out of the garbage collector: a full collection no longer walks
them, and what is made afterwards is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from auditflow.heap import FULL_EVERY, freeze_start_up


class _Node:
    def __init__(self) -> None:
        self.partner: _Node | None = None


@pytest.fixture
def thawed() -> Iterator[None]:
    """Leave the interpreter's collector as it found it for the other tests."""
    threshold = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("thawed")
def test_objects_alive_at_start_up_leave_the_collectors_generations() -> None:
    survivors = [_Node() for _ in range(10_000)]
    tracked_before = len(gc.get_objects())

    frozen = freeze_start_up()

    assert frozen >= len(survivors)
    # (not the exact count: a thread an earlier test left running may free frozen objects meanwhile)
    tracked = {id(obj) for obj in gc.get_objects()}
    assert not any(id(node) in tracked for node in survivors)  # a full collection walks none of them
    assert len(tracked) < tracked_before - len(survivors)


@pytest.mark.usefixtures("thawed")
def test_garbage_made_after_the_freeze_is_still_collected() -> None:
    freeze_start_up()
    first, second = _Node(), _Node()
    first.partner, second.partner = second, first  # (a cycle: only the collector frees it)
    gone = weakref.ref(first)
    del first, second

    gc.collect()

    assert gone() is None


@pytest.mark.usefixtures("thawed")
def test_after_the_freeze_full_collections_come_less_often() -> None:
    young, middle, full = gc.get_threshold()

    freeze_start_up()

    assert gc.get_threshold() == (young, middle, FULL_EVERY)
    assert full < FULL_EVERY

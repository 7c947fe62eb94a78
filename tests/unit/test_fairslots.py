"""Fair turns at the page workers' slots (`gateway.fairslots`), as plain asyncio."""

from __future__ import annotations

import asyncio

import pytest

from gateway.fairslots import FairSlots


async def take(slots: FairSlots, key: str, order: list[str]) -> None:
    await slots.acquire(key)
    order.append(key)


async def settled() -> None:
    for _ in range(5):  # (a granted waiter's task runs on the loop's next turns)
        await asyncio.sleep(0)


async def test_a_freed_slot_goes_to_the_principals_in_turn_not_in_order_of_arrival() -> None:
    slots = FairSlots(1)
    await slots.acquire("flood")
    order: list[str] = []
    waiters = [asyncio.create_task(take(slots, "flood", order)) for _ in range(5)]
    await settled()
    waiters += [asyncio.create_task(take(slots, "alice", order)), asyncio.create_task(take(slots, "bob", order))]
    await settled()
    assert slots.waiting == 7
    for _ in range(7):
        slots.release()
        await settled()
    assert order == ["flood", "alice", "bob", "flood", "flood", "flood", "flood"]
    assert slots.waiting == 0
    await asyncio.gather(*waiters)


async def test_free_slots_are_taken_at_once_and_counted_back() -> None:
    slots = FairSlots(2)
    await asyncio.wait_for(slots.acquire("a"), 1)
    await asyncio.wait_for(slots.acquire("a"), 1)
    third = asyncio.create_task(slots.acquire("b"))
    await settled()
    assert not third.done() and slots.waiting == 1
    slots.release()
    await asyncio.wait_for(third, 1)
    slots.release()
    slots.release()
    await asyncio.wait_for(slots.acquire("c"), 1)
    await asyncio.wait_for(slots.acquire("c"), 1)  # both free again: no slot was lost


async def test_a_waiter_that_gives_up_leaves_no_trace_and_a_granted_one_passes_its_slot_on() -> None:
    slots = FairSlots(1)
    await slots.acquire("a")
    gone = asyncio.create_task(slots.acquire("b"))
    later = asyncio.create_task(slots.acquire("c"))
    await settled()
    gone.cancel()
    await settled()
    assert slots.waiting == 1
    slots.release()
    await asyncio.wait_for(later, 1)  # (c's turn; b's cancelled wait took nothing)
    granted = asyncio.create_task(slots.acquire("d"))
    after = asyncio.create_task(slots.acquire("e"))
    await settled()
    slots.release()  # d is given the slot ...
    granted.cancel()  # ... and cancelled before it ran: the slot goes on to e
    await settled()
    assert granted.cancelled()
    await asyncio.wait_for(after, 1)


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        FairSlots(0)

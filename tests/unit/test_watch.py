"""The event hub wakes watchers without ever letting one miss a change."""

from __future__ import annotations

import asyncio

import pytest

from auditflow.watch import EventHub, wait_for


async def test_publish_wakes_a_waiter_taken_before_the_change() -> None:
    hub: EventHub[str] = EventHub()
    hub.subscribe("w")
    changed = hub.waiter("w")
    hub.publish("w", 1, "e1")  # happens between the watcher's read and its wait
    assert await wait_for(changed, 1.0)
    assert hub.cached_after("w", 0) == ["e1"]


async def test_wait_times_out_without_changes_and_wake_ends_it() -> None:
    hub: EventHub[str] = EventHub()
    hub.subscribe("w")
    assert not await wait_for(hub.waiter("w"), 0.01)
    changed = hub.waiter("w")
    asyncio.get_running_loop().call_later(0.01, hub.wake, "w")
    assert await wait_for(changed, 1.0)


async def test_the_cache_answers_only_when_it_covers_the_gap() -> None:
    hub: EventHub[str] = EventHub()
    hub.subscribe("w")
    for seq in (5, 6, 7):
        hub.publish("w", seq, f"e{seq}")
    assert hub.cached_after("w", 5) == ["e6", "e7"]
    assert hub.cached_after("w", 4) == ["e5", "e6", "e7"]
    assert hub.cached_after("w", 2) is None  # events 3 and 4 are not cached: read the log
    hub.publish("w", 9, "e9")  # a gap: the cache restarts rather than lie
    assert hub.cached_after("w", 7) is None


async def test_channels_are_freed_with_their_last_watcher() -> None:
    hub: EventHub[str] = EventHub()
    hub.subscribe("w")
    hub.subscribe("w")
    hub.unsubscribe("w")
    hub.publish("w", 1, "e1")
    hub.unsubscribe("w")
    hub.publish("w", 2, "e2")  # nobody watches: not kept
    assert hub.cached_after("w", 0) is None
    with pytest.raises(RuntimeError):
        hub.waiter("w")

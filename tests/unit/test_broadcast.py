"""The processor's event broadcast wakes watchers without ever letting one miss a change."""

from __future__ import annotations

import asyncio

from auditflow.waits import wait_for
from processor.broadcast import EventBroadcast


async def test_a_wait_after_the_change_returns_at_once() -> None:
    hub: EventBroadcast[str] = EventBroadcast()
    hub.subscribe("w")
    hub.publish("w", 1, "e1")  # happens between the watcher's read and its wait
    assert await asyncio.wait_for(hub.wait("w", 0, 10.0), 1.0)
    assert hub.cached_after("w", 0) == ["e1"]


async def test_a_wait_times_out_without_changes_and_a_publish_ends_it() -> None:
    hub: EventBroadcast[str] = EventBroadcast()
    hub.subscribe("w")
    assert not await hub.wait("w", 0, 0.01)
    asyncio.get_running_loop().call_later(0.01, hub.publish, "w", 1, "e1")
    assert await hub.wait("w", 0, 10.0)


async def test_wait_for_an_event_set_before_or_during_the_wait() -> None:
    event = asyncio.Event()
    assert not await wait_for(event, 0.01)
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_for(event, 10.0)
    assert await wait_for(event, 0.0)  # already set: no wait at all


async def test_the_cache_answers_only_when_it_covers_the_gap() -> None:
    hub: EventBroadcast[str] = EventBroadcast()
    hub.subscribe("w")
    for seq in (5, 6, 7):
        hub.publish("w", seq, f"e{seq}")
    assert hub.cached_after("w", 5) == ["e6", "e7"]
    assert hub.cached_after("w", 4) == ["e5", "e6", "e7"]
    assert hub.cached_after("w", 2) is None  # events 3 and 4 are not cached: read the log
    hub.publish("w", 9, "e9")  # a gap: the cache restarts rather than lie
    assert hub.cached_after("w", 7) is None


async def test_channels_are_freed_with_their_last_watcher() -> None:
    hub: EventBroadcast[str] = EventBroadcast()
    hub.subscribe("w")
    hub.subscribe("w")
    hub.unsubscribe("w")
    hub.publish("w", 1, "e1")
    hub.unsubscribe("w")
    hub.publish("w", 2, "e2")  # nobody watches: not kept
    assert hub.cached_after("w", 0) is None
    assert hub.watched == 0

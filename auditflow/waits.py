"""Waiting on an `asyncio.Event` with a deadline, as both services' watchers and loops do."""

from __future__ import annotations

import asyncio


async def wait_for(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event`; False if `timeout` seconds passed first. (`asyncio.timeout`, not
    `asyncio.wait_for`: no task of its own per wait, which a thousand watchers feel.)"""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True

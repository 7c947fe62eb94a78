"""A component's background loop: started once, stopped by cancelling and waiting for it."""

from __future__ import annotations

import asyncio

import pytest

from auditflow.background import Background


async def test_a_loop_runs_once_until_it_is_stopped() -> None:
    runs: list[int] = []
    stopped = asyncio.Event()

    async def loop() -> None:
        runs.append(1)
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    background = Background("test")
    background.start(loop)
    background.start(loop)  # (running already: nothing)
    await asyncio.sleep(0)
    assert runs == [1] and background.running
    await background.stop()
    assert stopped.is_set() and not background.running
    await background.stop()  # (stopped already: nothing)


async def test_a_cancelled_stop_is_cancelled_not_swallowed() -> None:
    """The loop takes time to end; whoever waits for it is cancelled meanwhile and must see
    its own cancellation, not carry on as if the stop had merely finished."""
    release = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()

    background = Background("test")
    background.start(slow_to_end)
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(background.stop())
    await asyncio.sleep(0)
    stopping.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopping


async def test_a_loop_that_failed_is_logged_at_stop_and_the_stop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    background = Background("broken")
    background.start(broken)
    await asyncio.sleep(0)
    await background.stop()
    assert "the broken loop had failed" in caplog.text and "boom" in caplog.text

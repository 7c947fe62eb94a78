"""A component's one long-lived loop in the background (the feed, the tail, the crosscheck, the
connection-cap watch, the credential checks): started at most once, and at stop cancelled and
waited for, so that no component leaves a task running behind it, and each writes only its
loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class Background:
    """One named task, between `start` and `stop`."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `run()` until `stop` (nothing if it runs already)."""
        if self._task is None:
            self._task = asyncio.create_task(run(), name=self._name)

    async def stop(self) -> None:
        """Cancel the loop and wait for it to end. A cancellation of the caller itself while
        it waits is not swallowed with the loop's own; a loop that had failed is logged, and
        does not stop the caller's other stops."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            stopping = asyncio.current_task()
            if stopping is not None and stopping.cancelling():
                raise
        except Exception:  # it had failed: said here, and the caller's stop goes on
            logger.exception("the %s loop had failed", self._name)

"""Open REST streams end when their caller's credential is revoked.

A stream is authenticated once, when it opens, and may then stay open for hours. So the
credentials of every open stream are kept here, and whenever the tokens file or the JWT keys
are loaded again (`Authenticator.generation` changes; the files are looked at every couple of
seconds), each stream's credential is authenticated anew: a stream whose token was removed,
whose JWT's key is gone or whose roles no longer allow the call is cancelled, and its handler
ends it with the refusal (`StreamGuard.refusal`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from auditflow import policy
from auditflow.auth import RELOAD_INTERVAL, Authenticator, Presented
from auditflow.errors import AuditflowError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Watched:
    """What an open stream was admitted with."""

    presented: Presented
    rpc_path: str


class StreamGuard:
    """The credentials of the open streams, checked again after every reload."""

    def __init__(self, authenticator: Authenticator, interval: float = RELOAD_INTERVAL) -> None:
        self._authenticator = authenticator
        self._interval = interval
        self._open: dict[asyncio.Task[Any], Watched] = {}
        self._refused: dict[asyncio.Task[Any], AuditflowError] = {}

    def add(self, task: asyncio.Task[Any], presented: Presented, rpc_path: str) -> None:
        self._open[task] = Watched(presented, rpc_path)

    def discard(self, task: asyncio.Task[Any]) -> None:
        self._open.pop(task, None)
        self._refused.pop(task, None)

    def refusal(self, task: asyncio.Task[Any]) -> AuditflowError | None:
        """Why the guard cancelled this stream, or None if it did not."""
        return self._refused.get(task)

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp's cleanup context: the checks run while the application serves."""
        checker = asyncio.create_task(self._run(), name="rest-stream-credentials")
        yield
        checker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checker

    async def _run(self) -> None:
        seen = self._authenticator.generation
        while True:
            await asyncio.sleep(self._interval)
            now = self._authenticator.generation
            if now != seen:
                seen = now
                await self.check()

    async def check(self) -> None:
        """Authenticate every open stream's credential again; cancel the refused ones. Each
        credential is checked once however many streams it holds (a JWT's signature is CPU
        work), and the event loop gets a turn between two checks."""
        verdicts: dict[tuple[Presented, str], AuditflowError | None] = {}
        for task, watched in list(self._open.items()):
            if task.done() or task in self._refused or watched.presented.authorization is None:
                continue  # (a trusted proxy's header is not revocable here: the proxy decides)
            key = (watched.presented, watched.rpc_path)
            if key not in verdicts:
                verdicts[key] = await self._verdict(watched)
                await asyncio.sleep(0)
            refusal = verdicts[key]
            if refusal is not None:
                logger.info("ending a stream of %s: its credential is no longer accepted", watched.rpc_path)
                self._refused[task] = refusal
                task.cancel()

    async def _verdict(self, watched: Watched) -> AuditflowError | None:
        try:
            caller = await self._authenticator.authenticate(watched.presented)
            policy.authorize(watched.rpc_path, caller)
        except AuditflowError as exc:
            return exc
        return None

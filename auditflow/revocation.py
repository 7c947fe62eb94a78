"""Open streams end when their caller's credential is revoked, over gRPC and REST alike.

A stream is authenticated once, when it opens, and may then stay open for hours. So the
credentials of every open stream are kept here, and whenever the tokens file or the JWT keys
are loaded again (`Authenticator.generation` changes; the files are looked at every couple of
seconds), each stream's credential is authenticated anew: a stream whose token was removed,
whose JWT's key is gone or whose roles no longer allow the call is ended, and told why (the
refusal, `Watched.refusal`).

Ending a stream cancels the task that serves it, at once when the stream waits for its next
message; a stream that is sending one (`Watched.sending`) is ended by its adapter as soon as
the send is done, so that a cancellation never lands inside the transport's own code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from auditflow import policy
from auditflow.auth import RELOAD_INTERVAL, Authenticator, Presented
from auditflow.background import Background
from auditflow.errors import AuditflowError

logger = logging.getLogger(__name__)


@dataclass
class Watched:
    """An open stream: what it was admitted with, and why it was ended (None while it is not)."""

    task: asyncio.Task[Any]
    presented: Presented
    rpc_path: str
    refusal: AuditflowError | None = None
    sending: bool = False

    def end(self, refusal: AuditflowError) -> None:
        """Refuse the stream: cancel it now, or (while it sends) let its adapter end it next."""
        self.refusal = refusal
        if not self.sending:
            self.task.cancel()


class StreamGuard:
    """The credentials of the open streams of both adapters, checked again after every reload;
    `start()` while the gateway serves, then `stop()`."""

    def __init__(self, authenticator: Authenticator, interval: float = RELOAD_INTERVAL) -> None:
        self._authenticator = authenticator
        self._interval = interval
        self._open: dict[asyncio.Task[Any], Watched] = {}
        self._checker = Background("stream-credentials")

    @contextlib.contextmanager
    def watching(self, presented: Presented, rpc_path: str) -> Iterator[Watched]:
        """Watch the current task's stream for its life."""
        task = asyncio.current_task()
        assert task is not None
        watched = self._open[task] = Watched(task, presented, rpc_path)
        try:
            yield watched
        finally:
            self._open.pop(task, None)

    async def start(self) -> None:
        self._checker.start(self._run)

    async def stop(self) -> None:
        await self._checker.stop()

    async def _run(self) -> None:
        seen = self._authenticator.generation
        while True:
            await asyncio.sleep(self._interval)
            now = self._authenticator.generation
            if now != seen:
                seen = now
                await self.check()

    async def check(self) -> None:
        """Authenticate every open stream's credential again; end the refused ones. Each
        credential is checked once however many streams it holds (a JWT's signature is CPU
        work), and the event loop gets a turn between two checks."""
        verdicts: dict[tuple[Presented, str], AuditflowError | None] = {}
        for watched in list(self._open.values()):
            if watched.task.done() or watched.refusal is not None or watched.presented.authorization is None:
                continue  # (a trusted proxy's header is not revocable here: the proxy decides)
            key = (watched.presented, watched.rpc_path)
            if key not in verdicts:
                verdicts[key] = await self._verdict(watched)
                await asyncio.sleep(0)
            refusal = verdicts[key]
            if refusal is not None and watched.refusal is None:
                logger.info("ending a stream of %s: its credential is no longer accepted", watched.rpc_path)
                watched.end(refusal)

    async def _verdict(self, watched: Watched) -> AuditflowError | None:
        try:
            caller = await self._authenticator.authenticate(watched.presented)
            policy.authorize(watched.rpc_path, caller)
        except AuditflowError as exc:
            return exc
        return None

"""The REST port's listener, bounded as `auditflow.connections` says, and its own accept loop.

aiohttp's TCPSite (asyncio's `create_server`) bounds neither the number of connections nor the
TLS handshake's time (60 s by default), and when the process runs out of file descriptors
asyncio logs the failed accept once per pending connection in the listen backlog, with a
traceback each, and schedules as many retries: tens of thousands of lines a second that hold
the event loop, so that nobody is served. This site accepts itself:
- past `max_connections`, a new connection gets 503 with Retry-After and is closed;
- out of descriptors, it stops accepting for a second (the connections wait in the backlog);
- each of the two says so in one log line per interval, with the count;
- an accepted connection is handed to aiohttp with `loop.connect_accepted_socket`, with the
  handshake timeout when it speaks TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from auditflow.connections import ConnectionSettings, RateLimitedLine

logger = logging.getLogger(__name__)

REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 35\r\n\r\ntoo many connections; retry shortly\n"
)
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_RETRY = 1.0  # seconds without accepting after the process ran out of descriptors
ACCEPT_BATCH = 256  # connections taken per readiness of the listening socket


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted among the site's open ones from its
    accept until it is lost."""

    def __init__(self, inner: asyncio.Protocol, live: dict[_Counted, float]) -> None:
        self.inner = inner
        self.made = False
        self._live = live
        live[self] = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.pop(self, None)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _Listener(asyncio.AbstractServer):
    """A listening socket read by `accept` whenever it is readable, until closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, accept: Callable[[], None]) -> None:
        self._loop = loop
        self.sockets = (sock,)
        self._accept = accept
        self._serving = False
        self.resume()

    def pause(self, seconds: float) -> None:
        if self._serving:
            self._loop.remove_reader(self.sockets[0].fileno())
            self._serving = False
            self._loop.call_later(seconds, self.resume)

    def resume(self) -> None:
        if not self._serving and self.sockets[0].fileno() != -1:
            self._loop.add_reader(self.sockets[0].fileno(), self._accept)
            self._serving = True

    def close(self) -> None:
        if self._serving:
            self._loop.remove_reader(self.sockets[0].fileno())
            self._serving = False
        self.sockets[0].close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        self.resume()

    async def serve_forever(self) -> None:
        raise NotImplementedError

    async def wait_closed(self) -> None:
        return None


class BoundedSite(web.TCPSite):
    """A TCPSite with a TLS handshake timeout, a maximum number of connections and accepts that
    survive running out of file descriptors."""

    __slots__ = ("_connections", "_exhausted", "_handshakes", "_limit", "_listener", "_live", "_refusals")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        connections: ConnectionSettings,
        *,
        ssl_context: ssl.SSLContext | None,
        backlog: int,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=backlog, reuse_port=False)
        self._connections = connections
        self._limit = connections.connection_cap()
        self._live: dict[_Counted, float] = {}
        self._handshakes: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # (registers the site with its runner)
        family = socket.AF_INET6 if ":" in (self._host or "") else socket.AF_INET
        host = (self._host or "").strip("[]")
        sock = socket.create_server((host, self._port), family=family, backlog=self._backlog)
        sock.setblocking(False)
        self._bound_port = sock.getsockname()[1]
        where = f"REST port {self._host}:{self._bound_port}"
        self._refusals = RateLimitedLine(
            f"{where}: refused {{count}} connection(s) since the last report: "
            f"it holds its maximum of {self._limit} (--max-connections)"
        )
        self._exhausted = RateLimitedLine(
            f"{where}: out of file descriptors {{count}} time(s) since the last report; "
            f"new connections wait in the backlog, accepting again every {ACCEPT_RETRY:g} s"
        )
        self._listener = _Listener(asyncio.get_running_loop(), sock, self._accept)
        self._server = self._listener

    def _accept(self) -> None:
        sock = self._listener.sockets[0]
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    logger.warning("REST port: accept failed: %s", exc)
                    return
                self._exhausted.note()
                self._listener.pause(ACCEPT_RETRY)
                return
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        if len(self._live) >= self._limit:
            self._forget_failed_handshakes()
        if len(self._live) >= self._limit:
            self._refusals.note()
            with contextlib.suppress(OSError):
                conn.send(REFUSAL)
            conn.close()
            return
        server = self._runner.server
        assert server is not None
        counted = _Counted(server(), self._live)
        task = asyncio.get_running_loop().create_task(self._connect(conn, counted))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _connect(self, conn: socket.socket, counted: _Counted) -> None:
        tls = self._ssl_context is not None
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: counted,
                conn,
                ssl=self._ssl_context,
                ssl_handshake_timeout=self._connections.handshake_timeout if tls else None,
            )
        except (OSError, TimeoutError) as exc:  # a failed or slow TLS handshake
            self._live.pop(counted, None)
            conn.close()
            logger.debug("REST connection closed before it was served: %s", exc)

    def _forget_failed_handshakes(self) -> None:
        """A TLS connection whose handshake failed unseen is never connected nor lost: past the
        handshake timeout it no longer counts."""
        before = time.monotonic() - self._connections.handshake_timeout - 1.0
        for counted, accepted in list(self._live.items()):
            if not counted.made and accepted < before:
                del self._live[counted]

"""How long a connection may take to start and may stay idle, and how many a server holds.

Without bounds, a client that opens connections and sends nothing keeps each one, with its
file descriptor, for good: enough of them and the process can accept nobody. So each server
closes a connection that has not finished its handshake within `handshake_timeout` (gRPC:
TLS and the HTTP/2 preface; REST: TLS), a REST connection with no request under way for
`http_idle_timeout` (a new one that sends nothing included), and a gRPC connection with no call
for `idle_timeout` (GOAWAY: clients reconnect at their next call). gRPC keepalive pings find
dead peers (`keepalive_time`, `keepalive_timeout`), and clients that ping more often than every
5 s without calls are disconnected.

Each listener holds at most `max_connections`; past it, a new connection is closed at once and
one line per interval says so, never one per connection (REST: `RateLimitedLine`, with the
count; gRPC, whose core refuses without a word: `CapWatch`). The default
(0) is the file-descriptor limit less `RESERVED_FDS`, so that one listener's connections never
use up the descriptors the databases and files need.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

from auditflow import config, limits, strangers
from auditflow.background import Background

logger = logging.getLogger(__name__)

# File descriptors kept for everything but client connections: database pools, the link to
# the processor, ledger files, log files, the listening sockets themselves.
RESERVED_FDS = 128
MAX_CONNECTIONS = 65_536  # the most a listener holds by default, whatever the descriptor limit
MIN_PING_INTERVAL_MS = 5000  # a client's pings without calls, at most this often
MAX_PING_STRIKES = 2  # pings too early before the connection is closed
REFUSAL_LOG_INTERVAL = 10.0  # seconds between two lines about refused connections


@dataclass(frozen=True)
class ConnectionSettings:
    """The bounds above; tests and the command line build it."""

    handshake_timeout: float = 5.0
    http_idle_timeout: float = 15.0
    idle_timeout: float = 300.0
    keepalive_time: float = 60.0
    keepalive_timeout: float = 20.0
    max_connections: int = 0  # 0: from the file-descriptor limit
    # Open streams of the public methods (health Watch, reflection): `limits.PublicStreams`.
    max_public_streams: int = limits.DEFAULT_MAX_PUBLIC_STREAMS
    # Calls without a principal, per address, before their answers wait: `auditflow.strangers`.
    anonymous_rate: limits.Rate = strangers.DEFAULT_ANONYMOUS

    def connection_cap(self) -> int:
        """The most connections one listener may hold."""
        return self.max_connections or fd_share()

    def grpc_options(self) -> list[tuple[str, Any]]:
        """gRPC core's channel arguments for these bounds."""
        return [
            ("grpc.server_handshake_timeout_ms", _ms(self.handshake_timeout)),
            ("grpc.max_connection_idle_ms", _ms(self.idle_timeout)),
            ("grpc.keepalive_time_ms", _ms(self.keepalive_time)),
            ("grpc.keepalive_timeout_ms", _ms(self.keepalive_timeout)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
            ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
            ("grpc.max_allowed_incoming_connections", self.connection_cap()),
        ]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def fd_share() -> int:
    """The file descriptors left once `RESERVED_FDS` are kept aside (at least 8)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft - RESERVED_FDS))


class RateLimitedLine:
    """A warning that may happen thousands of times a second (a refused connection, a failed
    accept): one log line per interval, saying how many times it happened since the last one."""

    def __init__(self, template: str, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self._template = template  # with {count}
        self._interval = interval
        self._count = 0
        self._since = -interval

    def note(self) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._since >= self._interval:
            logger.warning(self._template.format(count=self._count))
            self._count = 0
            self._since = now


class CapWatch:
    """gRPC's core closes a connection past its maximum (`grpc.max_allowed_incoming_connections`)
    at once and says nothing: no log line, and no callback to count one by. So every interval
    this counts the connections the gRPC port holds (the kernel's table) and, while they are at
    the maximum, writes one line: one per interval, like the REST port's refusals, never one
    per connection. Linux only (elsewhere it never finds the port full)."""

    def __init__(self, host: str, port: int, cap: int, interval: float | None = None) -> None:
        self._where = f"gRPC port {host}:{port}"
        self._port = port
        self._cap = cap
        self._interval = interval or REFUSAL_LOG_INTERVAL
        self._task = Background("connection-cap-watch")

    def start(self) -> None:
        self._task.start(self._run)

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if await asyncio.to_thread(self._held) >= self._cap:
                logger.warning(
                    "%s: holds its maximum of %d connections (--max-connections): new ones are closed at once",
                    self._where,
                    self._cap,
                )

    def _held(self) -> int:
        """Connections established to the port (blocking: reads /proc)."""
        if open_descriptors() < self._cap:  # (each connection holds a descriptor: a cheap look first)
            return 0
        return established(self._port)


def open_descriptors() -> int:
    """The file descriptors this process holds (0 where /proc does not say)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


TCP_ESTABLISHED = "01"  # (the state column of /proc/net/tcp)


def established(port: int) -> int:
    """TCP connections established to local `port`, IPv4 and IPv6 (from /proc/net)."""
    suffix, count = f":{port:04X}", 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as rows:
            next(rows, None)  # (the header)
            for row in rows:
                fields = row.split(maxsplit=4)
                count += fields[3] == TCP_ESTABLISHED and fields[1].endswith(suffix)
    return count


# The intervals a server's connections are held to: flag, help (each sets the field of its name).
INTERVAL_FLAGS = (
    ("--handshake-timeout", "seconds a new connection has to finish its TLS or HTTP/2 handshake"),
    ("--idle-timeout", "seconds a gRPC connection may stay without a call before it is closed"),
    ("--http-idle-timeout", "seconds a REST connection may stay without a request (a new one too)"),
    ("--keepalive-time", "seconds between the server's keepalive pings on a gRPC connection"),
    ("--keepalive-timeout", "seconds a gRPC peer has to answer a keepalive ping"),
)


def add_flags(parser: argparse.ArgumentParser, service: str) -> None:
    add = config.adder(parser, service)
    defaults = ConnectionSettings()
    for flag, help in INTERVAL_FLAGS:
        add(flag, help, default=getattr(defaults, flag.lstrip("-").replace("-", "_")), type=config.interval)
    add(
        "--max-connections",
        "most connections each port holds; 0: what the file-descriptor limit allows",
        default=defaults.max_connections,
        type=config.non_negative_int,
    )
    add(
        "--max-public-streams",
        "health Watch and reflection streams (no credentials) this server holds open at once, at most "
        f"{limits.PUBLIC_STREAMS_PER_PEER} from one address; 0: no limit",
        default=defaults.max_public_streams,
        type=config.non_negative_int,
    )
    add(
        "--anonymous-rate",
        "calls without a principal one address may make (failing authentication, health checks, reflection, "
        "unknown methods, REST paths outside the API), as CALLS_PER_SECOND:BURST; past it, each one's answer "
        f"(unchanged) waits its turn, at most {limits.MAX_HOLD:g} s ('off': no limit)",
        default=str(defaults.anonymous_rate),
        type=limits.Rate.parse,
    )


def from_args(args: argparse.Namespace) -> ConnectionSettings:
    return ConnectionSettings(
        handshake_timeout=args.handshake_timeout,
        http_idle_timeout=args.http_idle_timeout,
        idle_timeout=args.idle_timeout,
        keepalive_time=args.keepalive_time,
        keepalive_timeout=args.keepalive_timeout,
        max_connections=args.max_connections,
        max_public_streams=args.max_public_streams,
        anonymous_rate=args.anonymous_rate,
    )

"""What both gRPC servers share: the interceptor, health, reflection, binding a port (TLS,
never shared with another process), graceful stop, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeAlias

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from auditflow import heap
from auditflow.auth import Authenticator
from auditflow.config import ConfigError
from auditflow.connections import ConnectionSettings
from auditflow.interceptor import CallInterceptor
from auditflow.limits import Limiter, PublicStreams
from auditflow.metrics import DatabaseCollector, Endpoint, RpcMetrics, ServiceMetrics
from auditflow.revocation import StreamGuard
from auditflow.strangers import Strangers
from auditflow.tls import ServerTls, TlsFiles

logger = logging.getLogger(__name__)

# The servicer context of a grpc.aio handler, for annotations.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


# Calls gRPC's core may hold before the Python server picks them up. The Python server takes
# new calls one at a time per method; past `max_pending_requests` (gRPC's default 1,000) the
# core refuses new calls at random, past the hard limit (3,000) all of them, and a call still
# waiting after `max_unrequested_time_in_server` (30 s) is killed; refused calls end CANCELLED
# with nothing logged. With these, 10,000 streams opened at once are all taken (in 6 to 9 s
# on a 2-core machine). These arguments are not in gRPC's public header: grpcio is pinned,
# and a test opens a burst past the defaults so that an upgrade cannot quietly undo them.
MAX_PENDING_CALLS = 20_000
MAX_PENDING_CALLS_HARD = 40_000
MAX_UNREQUESTED_SECONDS = 120


SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    # Never share a port: a second server on a port in use must fail, not split the clients
    # between two processes (gRPC sets SO_REUSEPORT by default).
    ("grpc.so_reuseport", 0),
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS_HARD),
    ("grpc.server_max_unrequested_time_in_server", MAX_UNREQUESTED_SECONDS),
]


def server_options(connections: ConnectionSettings) -> list[tuple[str, Any]]:
    """The gRPC server's options: ours, and the connection bounds (`auditflow.connections`)."""
    return [*SERVER_OPTIONS, *connections.grpc_options()]


def new_server(
    authenticator: Authenticator,
    connections: ConnectionSettings,
    *,
    metrics: RpcMetrics | None = None,
    outer: Sequence[Any] = (),
    limiter: Limiter | None = None,
    guard: StreamGuard | None = None,
    strangers: Strangers,
    counted_in: ServiceMetrics,
) -> grpc.aio.Server:
    """A server with our interceptor (and `outer` ones before it: tracing); its refusals of
    public streams count in `counted_in`'s registry. `strangers`: its calls without a
    principal by address (`strangers_of`), shared with the process's other port."""
    public = PublicStreams(connections.max_public_streams, refusals=counted_in.limit_refusals)
    interceptors = [*outer, CallInterceptor(authenticator, metrics, limiter, guard, public, strangers)]
    return grpc.aio.server(interceptors=interceptors, options=server_options(connections))


def strangers_of(
    authenticator: Authenticator, connections: ConnectionSettings, counted_in: ServiceMetrics
) -> Strangers:
    """The process's calls without a principal by address, held to `connections`' rate (but
    a trusted proxy's); its held answers count in `counted_in`'s refusals."""
    return Strangers(connections.anonymous_rate, refusals=counted_in.limit_refusals, trusted=authenticator.proxy)


def add_health_and_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> health_aio.HealthServicer:
    """Register grpc.health.v1 and server reflection. Reflection lists the services this
    server answers (`service_names`, health, reflection) and no other: the gateway's health
    reports its processor link under the processor's service name, which it does not serve."""
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    return health_servicer


async def set_serving(
    health_servicer: health_aio.HealthServicer, service_names: Iterable[str], serving: bool = True
) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *service_names]:
        await health_servicer.set(name, status)


class DatabaseHealth:
    """`grpc.health.v1` follows the database: NOT_SERVING while it is unreachable, SERVING
    again when it answers (an `auditflow.db.OutageObserver`, called from database threads)."""

    def __init__(self, health_servicer: health_aio.HealthServicer, service_names: Iterable[str]) -> None:
        self._health = health_servicer
        self._names = list(service_names)
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()

    def database_reachable(self, reachable: bool) -> None:
        with contextlib.suppress(RuntimeError):  # (the loop is closed: the server is gone)
            self._loop.call_soon_threadsafe(self._set, reachable)

    def _set(self, reachable: bool) -> None:
        task = asyncio.create_task(set_serving(self._health, self._names, reachable))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class LinkHealth:
    """A named service in `grpc.health.v1` that reports a link to another service (the
    gateway's to the processor: SERVING while its feed is up), apart from the server's own
    health, so that a probe can tell "this gateway is down" from "its processor is"."""

    def __init__(
        self, health_servicer: health_aio.HealthServicer, name: str, on_change: Callable[[bool], None] | None = None
    ) -> None:
        self._health = health_servicer
        self.name = name
        self._on_change = on_change
        self._tasks: set[asyncio.Task[None]] = set()

    def link_changed(self, up: bool) -> None:
        """On the event loop."""
        status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
        task = asyncio.create_task(self._health.set(self.name, status))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._on_change is not None:
            self._on_change(up)


def bind(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> int:
    """Listen on `address` ("host:port"), with TLS if given; the port bound. A port in use is
    a ConfigError (one line), found before gRPC tries, which would log a screenful."""
    host, _, port_text = address.rpartition(":")
    check_port_free(host, int(port_text))
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls.grpc_credentials())
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(f"cannot listen on {address}")
    return port


def check_port_free(host: str, port: int) -> None:
    """Raise ConfigError if another socket listens on host:port (port 0 is always free)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(
                        f"cannot listen on {host}:{port}: the port is in use by another process"
                    ) from None
                raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


async def run_until_signalled(stop: Callable[[], Awaitable[None]], reload: Callable[[], None] | None = None) -> None:
    """Wait for SIGINT/SIGTERM, then run `stop` (graceful shutdown). SIGHUP runs `reload`
    (blocking: on a thread) and goes on serving.

    Once the signals are handled, the start-up objects are frozen out of the garbage collector
    (`auditflow/heap.py`; a full collection, so on a thread). In that order: a SIGHUP sent as
    soon as the server answers must find its handler, not the freeze still running."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    reloads: set[asyncio.Task[None]] = set()
    if reload is not None:

        def on_hangup() -> None:
            logger.info("SIGHUP: reloading credentials and certificates")
            task = asyncio.ensure_future(asyncio.to_thread(reload))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    await asyncio.to_thread(heap.freeze_start_up)
    await stopping.wait()
    logger.info("stopping")
    await stop()


class MetricsSettings(Protocol):
    """What a server's settings say about its /metrics endpoint."""

    @property
    def metrics_address(self) -> str: ...
    @property
    def tls(self) -> TlsFiles: ...
    @property
    def allow_plaintext(self) -> bool: ...


def metrics_endpoint(
    settings: MetricsSettings, service: ServiceMetrics, collector: DatabaseCollector
) -> Endpoint | None:
    """The /metrics endpoint `--metrics-address` asks for, on the server's certificate; None without one."""
    if not settings.metrics_address:
        return None
    return Endpoint(
        settings.metrics_address,
        service,
        collector,
        certfile=settings.tls.cert_file,
        keyfile=settings.tls.key_file,
        allow_plaintext=settings.allow_plaintext,
    )

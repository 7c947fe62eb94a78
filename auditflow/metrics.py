"""Prometheus metrics: every metric of both services, defined here, in one list.

Why one module: an operator reads docs/operations.md, a developer this file, and both find the
same names. Metrics live in prometheus-client's default registry (one service per process in
production; in tests, where a gateway and a processor may share a process, each keeps to its
own names). Names follow the Prometheus conventions: base units (`_seconds`, `_bytes`),
`_total` for counters, and label values from small fixed sets; never a workflow id, a user or
a path as a label.

Recording costs a few hundred nanoseconds per update. `Endpoint` exposes them over HTTP at
`/metrics` (`--metrics-address`); without it the per-RPC metrics are not even recorded (the
interceptor skips them), while the few other counters are kept in memory.

Gauges that only the database knows (runs by status, outbox rows and the oldest one's age)
are read when Prometheus scrapes (`DatabaseCollector`), on the scrape's thread, never on the
event loop; a scrape during a database outage leaves them out and says so in
`auditflow_database_up`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from auditflow.config import ConfigError
from auditflow.tls import check_plaintext

logger = logging.getLogger(__name__)

# Latency buckets (seconds) from a fast unary call to a long stream or cycle.
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# --- RPCs (both services; the names of go-grpc-prometheus and grpc-ecosystem) -----------

RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
SERVER_STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", RPC_LABELS)
SERVER_HANDLED = Counter(
    "grpc_server_handled_total", "RPCs completed on the server, by status code.", (*RPC_LABELS, "grpc_code")
)
SERVER_SECONDS = Histogram(
    "grpc_server_handling_seconds", "Time from an RPC's start to its end on the server (a stream: its whole life).",
    RPC_LABELS, buckets=FAST,
)  # fmt: skip
CLIENT_HANDLED = Counter(
    "grpc_client_handled_total", "RPCs the gateway made to the processor, by status code.", (*RPC_LABELS, "grpc_code")
)
CLIENT_SECONDS = Histogram(
    "grpc_client_handling_seconds", "Time of the gateway's RPCs to the processor.", RPC_LABELS, buckets=FAST
)

# --- the database (both services; `database` is "gateway" or "processor") ---------------

DB_LABELS = ("database", "thread")  # thread: "writer" or "reader"
DB_BATCH_SIZE = Histogram(
    "auditflow_db_batch_size", "Requests run together in one transaction (group commit; grouped reads).",
    DB_LABELS, buckets=BATCH,
)  # fmt: skip
DB_TRANSACTION_SECONDS = Histogram(
    "auditflow_db_transaction_seconds", "Time of one grouped transaction, commit included.", DB_LABELS, buckets=FAST
)
DB_LOCK_TIMEOUTS = Counter(
    "auditflow_db_lock_timeouts_total", "Calls refused because a row stayed locked past lock_timeout.", ("database",)
)

# --- the gateway ------------------------------------------------------------------------

DECISIONS = Counter(
    "auditflow_gateway_decisions_total",
    "Approve and Reject calls by kind and outcome: dispatched (the run was handed to the outbox), "
    "recorded (an approval of several), rejected, repeated (nothing changed), refused (an error).",
    ("kind", "outcome"),
)
OUTBOX_DELIVERIES = Counter(
    "auditflow_gateway_outbox_deliveries_total",
    "Outbox rows sent to the processor, by kind (enqueue, cancel) and result (accepted, refused, failed).",
    ("kind", "result"),
)
OUTBOX_GATE_OPEN = Gauge(
    "auditflow_gateway_outbox_gate_open",
    "1 while the outbox relay sends; 0 while it waits for an unavailable processor (it probes its health).",
)
PROCESSOR_LINK_UP = Gauge(
    "auditflow_gateway_processor_link_up", "1 while the gateway's feed from the processor is subscribed and caught up."
)
OUTBOX_DISPATCH_SECONDS = Histogram(
    "auditflow_gateway_dispatch_seconds", "From an approval's commit to the processor accepting its run.",
    buckets=SLOW,
)  # fmt: skip
WATCH_STREAMS = Gauge(
    "auditflow_gateway_watch_streams", "Open WatchStatus streams, over gRPC and REST (SSE or NDJSON) together."
)
LIMIT_REFUSALS = Counter(
    "auditflow_limit_refusals_total",
    "Calls refused because their principal was past one of its limits, by limit: write_rate, read_rate, "
    "watch_rate, streams, pending_plans, plan_bytes.",
    ("limit",),
)
REST_STREAMS = Gauge("auditflow_gateway_rest_streams", "Open REST streams (SSE or NDJSON): status and exports.")
REST_REQUESTS = Counter(
    "auditflow_gateway_rest_requests_total", "REST requests by route, method and HTTP status.",
    ("route", "method", "code"),
)  # fmt: skip
REST_SECONDS = Histogram(
    "auditflow_gateway_rest_request_seconds", "REST request time by route and method (a stream: its whole life).",
    ("route", "method"), buckets=FAST,
)  # fmt: skip

# --- the processor ----------------------------------------------------------------------

RUNS_DRIVEN = Gauge("auditflow_processor_runs_driven", "Runs this processor drives now.")
MAX_CONCURRENT = Gauge("auditflow_processor_max_concurrent", "Runs this processor may drive at once.")
CYCLE_SECONDS = Histogram(
    "auditflow_processor_cycle_seconds", "Time of one cycle's work (the orchestrator call), by the step's procedure.",
    ("procedure",), buckets=SLOW,
)  # fmt: skip
CYCLE_ERRORS = Counter(
    "auditflow_processor_cycle_errors_total", "Failed cycles by procedure and kind (error: retried; critical).",
    ("procedure", "kind"),
)  # fmt: skip
LEASE_CLAIMS = Counter(
    "auditflow_processor_lease_claims_total",
    "Runs claimed, by kind: first (a queued run starts) or rescue (a run whose lease expired or was released).",
    ("kind",),
)
LEASE_RENEWALS = Counter(
    "auditflow_processor_lease_renewals_total", "Lease renewals by result (kept, lost).", ("result",)
)
FENCED = Counter(
    "auditflow_processor_fenced_total",
    "Writes refused because this processor's lease on the run was gone (another processor took it over).",
)
APPROVE_TO_FIRST_CYCLE = Histogram(
    "auditflow_processor_approve_to_first_cycle_seconds",
    "From the approval (the gateway's commit) to the run's first cycle starting here.",
    buckets=SLOW,
)

# Unknown procedures are counted under this name, so that a typo cannot grow the label set.
OTHER = "other"


class Endpoint:
    """A server's `/metrics` over HTTP (HTTPS with the server's certificate, when it has one),
    on a thread of prometheus-client's, with the gauges only its database knows.

    The metrics say how busy the service is and how its workflows fare: an address without a
    host listens on loopback, and plaintext off loopback needs `--allow-plaintext`, as for
    the service's own ports. A port in use is a ConfigError (one line at start-up)."""

    def __init__(self, address: str, collector: DatabaseCollector | None = None, *, certfile: str = "",
                 keyfile: str = "", allow_plaintext: bool = False) -> None:  # fmt: skip
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self._port = int(port)
        check_plaintext("the metrics endpoint", self.host, bool(certfile), allow_plaintext)
        self._collector = collector
        self._certfile = certfile
        self._keyfile = keyfile
        self._server: Any = None
        self._thread: Any = None
        self.port = 0

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(
                self._port, self.host, certfile=self._certfile or None, keyfile=self._keyfile or None
            )
        except OSError as exc:
            why = "the port is in use by another process" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ConfigError(f"cannot listen on {self.host}:{self._port} (metrics): {why}") from None
        self.port = self._server.server_port
        if self._collector is not None:
            DATABASE_GAUGES.sources.append(self._collector)
        scheme = "https" if self._certfile else "http"
        logger.info("metrics at %s://%s:%d/metrics", scheme, self.host, self.port)

    def stop(self) -> None:
        if self._server is None:
            return
        if self._collector is not None:
            DATABASE_GAUGES.sources.remove(self._collector)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None


@dataclass(frozen=True)
class Sample:
    """One value of a gauge read from the database."""

    labels: tuple[str, ...]
    value: float


class DatabaseCollector:
    """Gauges read from one service's database at scrape time: `read()` (blocking, on the
    scrape's thread) returns {metric name: samples}; `describe` gives their help and label
    names. Added to `DATABASE_GAUGES` while its server's endpoint runs."""

    def __init__(self, database: str, read: Callable[[], dict[str, list[Sample]]],
                 describe: dict[str, tuple[str, tuple[str, ...]]]) -> None:  # fmt: skip
        self.database = database
        self.read = read
        self.describe = describe


class _DatabaseGauges(Collector):
    """Every registered DatabaseCollector, as one collector: one `auditflow_database_up`
    family, a sample per database (a process serves one in production; tests run two)."""

    def __init__(self) -> None:
        self.sources: list[DatabaseCollector] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("auditflow_database_up", "1 if the last scrape could read the database.",
                               labels=("database",))  # fmt: skip
        families: list[GaugeMetricFamily] = []
        for source in list(self.sources):
            try:
                values = source.read()
            except Exception as exc:  # an outage: its gauges are left out, and `up` says why
                logger.debug("metrics: reading the %s database failed: %s", source.database, type(exc).__name__)
                up.add_metric((source.database,), 0)
                continue
            up.add_metric((source.database,), 1)
            for name, (help_text, labels) in source.describe.items():
                family = GaugeMetricFamily(name, help_text, labels=labels)
                for sample in values.get(name, []):
                    family.add_metric(sample.labels, sample.value)
                families.append(family)
        yield up
        yield from families


DATABASE_GAUGES = _DatabaseGauges()
REGISTRY.register(DATABASE_GAUGES)


def split_method(full: str) -> tuple[str, str]:
    """("/pkg.Service/Method") -> ("pkg.Service", "Method")."""
    _, service, method = full.split("/", 2) if full.count("/") >= 2 else ("", "", full)
    return service, method


@dataclass
class MethodMetrics:
    """The label children of one RPC method, resolved once (`labels()` takes a lock)."""

    started: Any
    seconds: Any
    _handled: Counter
    _labels: tuple[str, ...]
    _codes: dict[str, Any] = field(default_factory=dict)

    def done(self, code: str, seconds: float) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._handled.labels(*self._labels, code)
        child.inc()
        self.seconds.observe(seconds)


class RpcMetrics:
    """RPC counters and latency of one side (server or client), per method."""

    def __init__(self, *, client: bool = False) -> None:
        self._started = None if client else SERVER_STARTED
        self._handled = CLIENT_HANDLED if client else SERVER_HANDLED
        self._seconds = CLIENT_SECONDS if client else SERVER_SECONDS
        self._methods: dict[tuple[str, str], MethodMetrics] = {}

    def method(self, full_method: str, kind: str) -> MethodMetrics:
        """The metrics of `full_method` ("/pkg.Service/Method"); kind: unary, server_stream."""
        found = self._methods.get((full_method, kind))
        if found is None:
            labels = (kind, *split_method(full_method))
            started = self._started.labels(*labels) if self._started is not None else _NOTHING
            found = MethodMetrics(started, self._seconds.labels(*labels), self._handled, labels)
            self._methods[(full_method, kind)] = found
        return found


class _Nothing:
    def inc(self) -> None:
        pass


_NOTHING = _Nothing()


class _ClientUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, measured: RpcMetrics) -> None:
        self._measured = measured

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = self._measured.method(_method_name(details), "unary")
        started = time.perf_counter()
        call = await continuation(details, request)
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            method.done(exc.code().name, time.perf_counter() - started)
            raise
        except asyncio.CancelledError:
            method.done("CANCELLED", time.perf_counter() - started)
            raise
        method.done("OK", time.perf_counter() - started)
        return call


class _ClientStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, measured: RpcMetrics) -> None:
        self._measured = measured
        self._recording: set[asyncio.Task[None]] = set()

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        method = self._measured.method(_method_name(details), "server_stream")
        started = time.perf_counter()
        call = await continuation(details, request)

        async def record() -> None:
            code = await call.code()  # (known once the call is done; a coroutine in grpc.aio)
            method.done(code.name, time.perf_counter() - started)

        def ended(_call: Any) -> None:
            task = asyncio.ensure_future(record())
            self._recording.add(task)
            task.add_done_callback(self._recording.discard)

        call.add_done_callback(ended)
        return call


def _method_name(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


def client_interceptors() -> list[Any]:
    """Interceptors that count and time the calls of a channel (the gateway's to the processor)."""
    measured = RpcMetrics(client=True)
    return [_ClientUnary(measured), _ClientStream(measured)]

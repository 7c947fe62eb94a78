"""Prometheus metrics: every metric of both services, defined here, in one list.

Why one module: an operator reads docs/operations.md, a developer this file, and both find the
same names. Each service has its own registry (`GATEWAY`, `PROCESSOR`) and its `/metrics`
exports that one only: a gateway never shows a processor's gauges as zeros (an alert on one
would fire on the other), even in tests where a gateway and a processor share a process. The
metrics both services record (RPCs served, the database) are defined once per registry. Names
follow the Prometheus conventions: base units (`_seconds`, `_bytes`), `_total` for counters,
and label values from small fixed sets; never a workflow id, a user or a path as a label.

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
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from auditflow.config import ConfigError
from auditflow.tls import check_plaintext

logger = logging.getLogger(__name__)

# Latency buckets (seconds) from a fast unary call to a long stream or cycle.
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
DB_LABELS = ("database", "thread")  # thread: "writer" or "reader"


class _DatabaseGauges(Collector):
    """The DatabaseCollectors of one service's running endpoints, as one collector: one
    `auditflow_database_up` family, a sample per database."""

    def __init__(self) -> None:
        self.sources: list[DatabaseCollector] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "auditflow_database_up", "1 if the last scrape could read the database.", labels=("database",)
        )
        families: dict[str, GaugeMetricFamily] = {}
        for source in list(self.sources):
            try:
                values = source.read()
            except Exception as exc:  # an outage: its gauges are left out, and `up` says why
                logger.debug("metrics: reading the %s database failed: %s", source.database, type(exc).__name__)
                up.add_metric((source.database,), 0)
                continue
            up.add_metric((source.database,), 1)
            for name, (help_text, labels) in source.describe.items():
                family = families.setdefault(name, GaugeMetricFamily(name, help_text, labels=labels))
                for sample in values.get(name, []):
                    family.add_metric(sample.labels, sample.value)
        yield up
        yield from families.values()


@dataclass(frozen=True)
class ServiceMetrics:
    """One service's registry, with the metrics every service records (the RPCs it serves,
    its database) and the process collectors (CPU, memory, file descriptors, GC)."""

    name: str
    registry: CollectorRegistry
    server_started: Counter
    server_handled: Counter
    server_seconds: Histogram
    db_batch_size: Histogram
    db_transaction_seconds: Histogram
    db_lock_timeouts: Counter
    limit_refusals: Counter
    database_gauges: _DatabaseGauges


def _service(name: str) -> ServiceMetrics:
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    database_gauges = _DatabaseGauges()
    registry.register(database_gauges)
    return ServiceMetrics(
        name=name,
        registry=registry,
        # The RPCs served (the names of go-grpc-prometheus and grpc-ecosystem).
        server_started=Counter(
            "grpc_server_started_total", "RPCs started on the server.", RPC_LABELS, registry=registry
        ),
        server_handled=Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*RPC_LABELS, "grpc_code"),
            registry=registry,
        ),
        server_seconds=Histogram(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its end on the server (a stream: its whole life).",
            RPC_LABELS,
            buckets=FAST,
            registry=registry,
        ),
        # The database (`database` is the service's name).
        db_batch_size=Histogram(
            "auditflow_db_batch_size",
            "Requests run together in one transaction (group commit; grouped reads).",
            DB_LABELS,
            buckets=BATCH,
            registry=registry,
        ),
        db_transaction_seconds=Histogram(
            "auditflow_db_transaction_seconds",
            "Time of one grouped transaction, commit included.",
            DB_LABELS,
            buckets=FAST,
            registry=registry,
        ),
        db_lock_timeouts=Counter(
            "auditflow_db_lock_timeouts_total",
            "Calls refused because a row stayed locked past lock_timeout.",
            ("database",),
            registry=registry,
        ),
        limit_refusals=Counter(
            "auditflow_limit_refusals_total",
            "Calls refused past a limit, by limit: a principal's (the gateway's write_rate, read_rate, "
            "watch_rate, streams, pending_plans, plan_bytes, plan_steps, plan_parameters), public_streams "
            "(health Watch and reflection streams past their address's or the server's bound), or "
            "anonymous (answers to calls without a principal held past their address's --anonymous-rate).",
            ("limit",),
            registry=registry,
        ),
        database_gauges=database_gauges,
    )


GATEWAY = _service("gateway")
PROCESSOR = _service("processor")
# A database of neither service (tools, benchmarks): recorded, never exported.
UNEXPORTED = _service("other")


def of(service: str) -> ServiceMetrics:
    """The metrics of the service named `service` ("gateway", "processor")."""
    return {"gateway": GATEWAY, "processor": PROCESSOR}.get(service, UNEXPORTED)


# --- the gateway ------------------------------------------------------------------------

CLIENT_HANDLED = Counter(
    "grpc_client_handled_total",
    "RPCs the gateway made to the processor, by status code.",
    (*RPC_LABELS, "grpc_code"),
    registry=GATEWAY.registry,
)
CLIENT_SECONDS = Histogram(
    "grpc_client_handling_seconds",
    "Time of the gateway's RPCs to the processor.",
    RPC_LABELS,
    buckets=FAST,
    registry=GATEWAY.registry,
)

DECISIONS = Counter(
    "auditflow_gateway_decisions_total",
    "Approve and Reject calls by kind and outcome: dispatched (the run was handed to the outbox), "
    "recorded (an approval of several), rejected, repeated (nothing changed), refused (an error).",
    ("kind", "outcome"),
    registry=GATEWAY.registry,
)
OUTBOX_DELIVERIES = Counter(
    "auditflow_gateway_outbox_deliveries_total",
    "Outbox rows sent to the processor, by kind (enqueue, cancel) and result (accepted, refused, failed).",
    ("kind", "result"),
    registry=GATEWAY.registry,
)
OUTBOX_GATE_OPEN = Gauge(
    "auditflow_gateway_outbox_gate_open",
    "1 while the outbox relay sends; 0 while it waits for an unavailable processor (it probes its health).",
    registry=GATEWAY.registry,
)
PROCESSOR_LINK_UP = Gauge(
    "auditflow_gateway_processor_link_up",
    "1 while the gateway's feed from the processor is subscribed and caught up.",
    registry=GATEWAY.registry,
)
OUTBOX_DISPATCH_SECONDS = Histogram(
    "auditflow_gateway_dispatch_seconds",
    "From an approval's commit to the processor accepting its run.",
    buckets=SLOW,
    registry=GATEWAY.registry,
)
WATCH_STREAMS = Gauge(
    "auditflow_gateway_watch_streams",
    "Open WatchStatus streams, over gRPC and REST (SSE or NDJSON) together.",
    registry=GATEWAY.registry,
)
REST_STREAMS = Gauge(
    "auditflow_gateway_rest_streams",
    "Open REST streams (SSE or NDJSON): status and exports.",
    registry=GATEWAY.registry,
)
PAGES_WAITING = Gauge(
    "auditflow_gateway_pages_waiting",
    "Pages of ListWorkflows and collection watches' initial lists waiting for a page worker process.",
    registry=GATEWAY.registry,
)
PAGE_WORKER_FAILURES = Counter(
    "auditflow_gateway_page_worker_failures_total",
    "Times a page worker process stopped (killed, out of memory) and its pool was replaced.",
    registry=GATEWAY.registry,
)
PACED_STREAMS = Gauge(
    "auditflow_paced_streams",
    "Streams and trail checks waiting for their principal's read rate before they go on (a collection "
    "watch's catch-up, one token per ten workflows; VerifyTrail, one per hundred events; ExportFindings, one "
    "per thousand findings).",
    registry=GATEWAY.registry,
)
LIMIT_REFUSALS = GATEWAY.limit_refusals  # (the per-principal limits are the gateway's)
REST_REQUESTS = Counter(
    "auditflow_gateway_rest_requests_total",
    "REST requests by route, method and HTTP status.",
    ("route", "method", "code"),
    registry=GATEWAY.registry,
)
REST_SECONDS = Histogram(
    "auditflow_gateway_rest_request_seconds",
    "REST request time by route and method (a stream: its whole life).",
    ("route", "method"),
    buckets=FAST,
    registry=GATEWAY.registry,
)

# --- the processor ----------------------------------------------------------------------

RUNS_DRIVEN = Gauge("auditflow_processor_runs_driven", "Runs this processor drives now.", registry=PROCESSOR.registry)
MAX_CONCURRENT = Gauge(
    "auditflow_processor_max_concurrent", "Runs this processor may drive at once.", registry=PROCESSOR.registry
)
CYCLE_SECONDS = Histogram(
    "auditflow_processor_cycle_seconds",
    "Time of one cycle's work (the orchestrator call), by the step's procedure.",
    ("procedure",),
    buckets=SLOW,
    registry=PROCESSOR.registry,
)
CYCLE_ERRORS = Counter(
    "auditflow_processor_cycle_errors_total",
    "Failed cycles by procedure and kind (error: retried; critical).",
    ("procedure", "kind"),
    registry=PROCESSOR.registry,
)
LEASE_CLAIMS = Counter(
    "auditflow_processor_lease_claims_total",
    "Runs claimed, by kind: first (a queued run starts) or rescue (a run whose lease expired or was released).",
    ("kind",),
    registry=PROCESSOR.registry,
)
LEASE_RENEWALS = Counter(
    "auditflow_processor_lease_renewals_total",
    "Lease renewals by result (kept, lost).",
    ("result",),
    registry=PROCESSOR.registry,
)
FENCED = Counter(
    "auditflow_processor_fenced_total",
    "Writes refused because this processor's lease on the run was gone (another processor took it over).",
    registry=PROCESSOR.registry,
)
APPROVE_TO_FIRST_CYCLE = Histogram(
    "auditflow_processor_approve_to_first_cycle_seconds",
    "From the approval (the gateway's commit) to the run's first cycle starting here.",
    buckets=SLOW,
    registry=PROCESSOR.registry,
)

# Unknown procedures are counted under this name, so that a typo cannot grow the label set.
OTHER = "other"


class Endpoint:
    """A server's `/metrics` over HTTP (HTTPS with the server's certificate, when it has one),
    on a thread of prometheus-client's: its service's registry, with the gauges only its
    database knows.

    The metrics say how busy the service is and how its workflows fare: an address without a
    host listens on loopback, and plaintext off loopback needs `--allow-plaintext`, as for
    the service's own ports. A port in use is a ConfigError (one line at start-up)."""

    def __init__(
        self,
        address: str,
        service: ServiceMetrics,
        collector: DatabaseCollector | None = None,
        *,
        certfile: str = "",
        keyfile: str = "",
        allow_plaintext: bool = False,
    ) -> None:
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self._port = int(port)
        self._service = service
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
                self._port,
                self.host,
                registry=self._service.registry,
                certfile=self._certfile or None,
                keyfile=self._keyfile or None,
            )
        except OSError as exc:
            why = "the port is in use by another process" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ConfigError(f"cannot listen on {self.host}:{self._port} (metrics): {why}") from None
        self.port = self._server.server_port
        if self._collector is not None:
            self._service.database_gauges.sources.append(self._collector)
        scheme = "https" if self._certfile else "http"
        logger.info("metrics at %s://%s:%d/metrics", scheme, self.host, self.port)

    def stop(self) -> None:
        if self._server is None:
            return
        if self._collector is not None:
            self._service.database_gauges.sources.remove(self._collector)
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
    names. Added to its service's registry while its server's endpoint runs."""

    def __init__(
        self,
        database: str,
        read: Callable[[], dict[str, list[Sample]]],
        describe: dict[str, tuple[str, tuple[str, ...]]],
    ) -> None:
        self.database = database
        self.read = read
        self.describe = describe


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
    """RPC counters and latency of one side, per method: the RPCs a service serves (`service`),
    or the gateway's calls to the processor (no `service`)."""

    def __init__(self, service: ServiceMetrics | None = None) -> None:
        self._started = service.server_started if service is not None else None
        self._handled = service.server_handled if service is not None else CLIENT_HANDLED
        self._seconds = service.server_seconds if service is not None else CLIENT_SECONDS
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
    measured = RpcMetrics()
    return [_ClientUnary(measured), _ClientStream(measured)]

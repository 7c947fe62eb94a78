"""OpenTelemetry traces: one trace from the approval to the run's last cycle.

Off unless configured, by OpenTelemetry's standard variables: `OTEL_TRACES_EXPORTER` (otlp,
console or none), `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (otlp
is then the default exporter), `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, and the
exporter's own `OTEL_EXPORTER_OTLP_*`. When off, no interceptor is installed and `span()` is a
shared no-op: nothing is recorded and the hot paths pay one boolean test.

When on, traces are sampled at their root and every span follows its parent's decision (a
parent-based ratio sampler): a sampled approval is traced to its last cycle, on every
processor, and an unsampled one records nothing anywhere, its context still passed along.
`OTEL_TRACES_SAMPLER_ARG` alone sets the ratio (default `DEFAULT_RATIO`); `OTEL_TRACES_SAMPLER`
picks any of OpenTelemetry's samplers instead (`parentbased_always_on` traces every call).
Spans leave in batches, off the serving threads (a BatchSpanProcessor), whatever the exporter.

When on, the OpenTelemetry gRPC instrumentation makes server and client spans of every RPC
(its interceptors, installed in `serving.new_server` and on the gateway's channel to the
processor) and the aiohttp instrumentation the REST spans. The approval's trace context (W3C
`traceparent`) is stored in the outbox row with the decision, so the relay's Enqueue
continues the approval's trace even when it is sent after a gateway restart; the processor
stores the Enqueue's context with the run, and every claim and cycle of the run, on any
processor and hours later, is a child of it (a parent, not a link: the cycles are the
approval's work, and one trace then shows the whole chain in any trace viewer; a trace
viewer shows a late cycle as a long gap, which is what happened).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.environment_variables import OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased

from auditflow.config import ConfigError

logger = logging.getLogger(__name__)

_enabled = False
_tracer: trace.Tracer = trace.NoOpTracer()
_NOTHING: AbstractContextManager[Any] = nullcontext()

DEFAULT_RATIO = 0.1
"""The share of root calls traced when only the exporter is configured: enough to see every
kind of call and its timing at any real rate, at a tenth of the cost of tracing them all."""


def exporter_from_environment() -> SpanExporter | None:
    """The exporter the OTEL_* variables ask for; None when tracing is off."""
    name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if name == "none" or (not name and not endpoint):
        return None
    if name in ("", "otlp"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    raise ConfigError(f"OTEL_TRACES_EXPORTER={name!r}: auditflow supports otlp, console or none")


def sampler_from_environment() -> Sampler | None:
    """The parent-based ratio sampler, its ratio from `OTEL_TRACES_SAMPLER_ARG`; None when
    `OTEL_TRACES_SAMPLER` names a sampler (OpenTelemetry's SDK then builds that one)."""
    if os.environ.get(OTEL_TRACES_SAMPLER, "").strip():
        return None
    text = os.environ.get(OTEL_TRACES_SAMPLER_ARG, "").strip()
    try:
        ratio = float(text) if text else DEFAULT_RATIO
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"{OTEL_TRACES_SAMPLER_ARG}={text!r}: the share of calls traced, from 0 to 1 (e.g. 0.1)")
    return ParentBased(TraceIdRatioBased(ratio))


def configure(service: str, exporter: SpanExporter | None = None, *, batch: bool = True) -> bool:
    """Turn tracing on for this process if the environment asks for it (or `exporter` is given:
    tests pass an in-memory one, unbatched). Returns whether tracing is on. Call before the
    servers are built: they install the instrumentation only when it is."""
    global _enabled, _tracer
    exporter = exporter or exporter_from_environment()
    if exporter is None:
        return False
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # (set once per process; tests reuse it)
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"auditflow-{service}"}
        provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler_from_environment())
        trace.set_tracer_provider(provider)
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    instrumentor = AioHttpServerInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:  # (REST apps built from now on)
        instrumentor.instrument(tracer_provider=provider)
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    _tracer = provider.get_tracer("auditflow")
    _enabled = True
    logger.info("tracing on: spans go to %s", type(exporter).__name__)
    return True


def disable() -> None:
    """Stop tracing in this process (tests): servers built from now on trace nothing."""
    global _enabled, _tracer
    _enabled = False
    _tracer = trace.NoOpTracer()
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    instrumentor = AioHttpServerInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def enabled() -> bool:
    return _enabled


def server_interceptors() -> list[Any]:
    """The gRPC server spans (OpenTelemetry's interceptor), when tracing is on; never for
    grpc.health.v1: probes every few seconds are noise in a trace store, and the interceptor
    reads every streaming handler as an async generator, which health Watch is not (it writes
    to its context), so a traced Watch would fail."""
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    return [aio_server_interceptor(filter_=filters.negate(filters.health_check()))]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[Any]:
    """The gRPC client spans, with the trace context sent along, when tracing is on."""
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]


def traceparent() -> str:
    """The current span's W3C trace context, to store and continue later ("" when off)."""
    if not _enabled:
        return ""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent", "")


def span(name: str, *, parent: str = "", attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Any]:
    """A span around the block, a child of the current span, or of `parent` (a stored
    `traceparent`) when given; a shared no-op when tracing is off."""
    if not _enabled:
        return _NOTHING
    context = extract({"traceparent": parent}) if parent else None
    return _tracer.start_as_current_span(name, context=context, attributes=dict(attributes or {}))

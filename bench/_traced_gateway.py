"""`python -m bench._traced_gateway [gateway flags]`: the gateway with tracing on, its spans
kept in OpenTelemetry's in-memory exporter (what tracing costs the gateway, without a
collector's network in the figure). Only bench/approve.py starts it."""

from __future__ import annotations

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from auditflow import tracing
from gateway import server

if __name__ == "__main__":
    tracing.configure("gateway", InMemorySpanExporter())  # (batched, as an OTLP exporter would be)
    server.main()

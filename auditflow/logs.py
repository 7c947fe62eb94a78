"""Logging set-up for the servers and the CLI: text for a terminal, JSON for a log pipeline.

`--log-format json` writes one JSON object per line (python-json-logger) with `time`, `level`,
`logger`, `message`, `service`, and, where known, `workflow_id`, `cycle`, `trace_id` and
`span_id`. Where a record happens is known from context, not from its arguments: an RPC
binds the workflow it names (`bind`, in the interceptor), the scheduler binds the run it
drives and the cycle it runs, and OpenTelemetry's current span gives the trace. Each RPC and
each run's driver is its own asyncio task, so what one binds never leaks into another.

Levels, as both services use them: INFO for progress (a workflow created, approved,
dispatched, each cycle, a completion), WARNING for what is retried (a failed cycle, an
outbox row the processor did not take, a lost lease, a database outage), ERROR for what needs
a person (a failed run, a request the processor refused for good, an unhandled exception),
DEBUG for state (a cycle's state, every refused call).

A log call only queues its record: a thread of its own writes it (`logging.handlers.
QueueListener`). A call on the event loop never waits for the write (stderr can be a pipe that
a slow reader fills), nor gives up the interpreter lock for it, which a thread busy with
another caller's page would then hold for up to a switch interval before the loop got it back.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_context: ContextVar[dict[str, Any] | None] = ContextVar("auditflow_log_context", default=None)


def setup(level: str, log_format: str = "text", service: str = "") -> None:
    """Configure the root logger once: `log_format` "text" or "json" (to stderr, written by a
    thread of its own; `logging.shutdown`, run at exit, writes what is queued)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    front = _Queued(handler)
    if log_format == "json":
        formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service} if service else None,
        )
        front.addFilter(ContextFilter())  # (where the record is made: the context is the caller's)
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(utc_iso_times(formatter))
    logging.basicConfig(level=level.upper(), handlers=[front], force=True)


class _Queued(logging.handlers.QueueHandler):
    """Hands each record to the thread that writes it with `handler`."""

    def __init__(self, handler: logging.Handler) -> None:
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        super().__init__(records)
        self._listener = logging.handlers.QueueListener(records, handler)
        self._listener.start()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The message is made now (its arguments may change later); the record is otherwise
        # kept whole, its exception included: the queue never leaves the process.
        record.msg = record.getMessage()
        record.args = None
        return record

    def close(self) -> None:
        if self._listener._thread is not None:  # (closed once by a new set-up, again at exit)
            self._listener.stop()  # (writes what is queued, then ends the thread)
        super().close()


def utc_iso_times(formatter: logging.Formatter) -> logging.Formatter:
    """Timestamps in ISO 8601, UTC, to the millisecond (2026-11-27T09:12:03.114Z), whatever the
    host's time zone: logging's default is local time with a comma before the milliseconds,
    which log pipelines cannot compare across hosts."""
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def bind(**fields: Any) -> None:
    """Add fields (workflow_id, cycle) to every record logged from this task from now on."""
    current = _context.get()
    _context.set({**current, **fields} if current else fields)


def bind_workflow(request: Any) -> None:
    """Bind the workflow a request names (its `workflow_id`, if any) to every record of its
    call, over gRPC and REST alike."""
    workflow_id = getattr(request, "workflow_id", None)
    if workflow_id:
        bind(workflow_id=workflow_id)


class ContextFilter(logging.Filter):
    """Copies the bound fields and the current trace and span ids onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        return True

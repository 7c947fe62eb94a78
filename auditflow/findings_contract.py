"""What both services agree on about findings: severities, orders, and a filter's checks."""

from __future__ import annotations

from auditflow.errors import invalid
from auditflow.v1 import workflow_pb2 as pb

SEVERITIES = ("high", "medium", "low")
ORDERS = ("severity", "amount", "found")
EXPORT_FORMATS = ("csv", "json", "parquet")
MAX_PAGE = 1000
DEFAULT_PAGE = 100


def check_filter(message: pb.FindingsFilter) -> None:
    """INVALID_ARGUMENT naming the field for a filter that cannot be asked."""
    if len(message.steps) > 100 or any(s < 1 for s in message.steps):
        raise invalid("filter.steps", "plan steps from 1 (at most 100 of them)")
    if len(message.procedures) > 100 or any(not p or len(p) > 100 for p in message.procedures):
        raise invalid("filter.procedures", "procedure names (at most 100 of them)")
    unknown = [s for s in message.severities if s not in SEVERITIES]
    if unknown:
        raise invalid("filter.severities", f"each one of high, medium, low (not {unknown[0]!r})")
    if message.order and message.order not in ORDERS:
        raise invalid("filter.order", f"one of {', '.join(ORDERS)}")


def check_page_size(size: int) -> int:
    if not 0 <= size <= MAX_PAGE:
        raise invalid("page_size", f"must be between 0 (default {DEFAULT_PAGE}) and {MAX_PAGE}")
    return size or DEFAULT_PAGE

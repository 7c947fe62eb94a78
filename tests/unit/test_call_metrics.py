"""The interceptor's count of every call by the status it ended with, on a real registry: the
one helper that serves unary calls and streams alike."""

from __future__ import annotations

import asyncio

import pytest

from auditflow import metrics
from auditflow.interceptor import _Timed
from auditflow.metrics import RpcMetrics

METHOD = "/auditflow.v1.Unit/Call"


def handled(code: str) -> float:
    value = metrics.UNEXPORTED.registry.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_type": "unary", "grpc_service": "auditflow.v1.Unit", "grpc_method": "Call", "grpc_code": code},
    )
    return value or 0.0


def test_a_call_that_returns_counts_as_ok_and_one_that_is_cancelled_as_cancelled() -> None:
    measured = RpcMetrics(metrics.UNEXPORTED).method(METHOD, "unary")
    ok, cancelled = handled("OK"), handled("CANCELLED")
    with _Timed(measured):
        pass
    with pytest.raises(asyncio.CancelledError), _Timed(measured):
        raise asyncio.CancelledError
    assert (handled("OK") - ok, handled("CANCELLED") - cancelled) == (1, 1)

"""What a caller of the gateway is told when a call it needs from the processor fails.

The gateway reads some answers from the processor (a run's findings, the events a watcher
missed). The processor's refusal of the caller's input keeps its code and field violations
(INVALID_ARGUMENT on a page token, NOT_FOUND); the processor being down, slow or refusing
the gateway itself is UNAVAILABLE for the caller (try again), with the cause in the
gateway's log, never INTERNAL. One mapping, used by every such call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from auditflow.errors import AuditflowError, FieldViolation, InvalidArgument, NotFound, Unavailable

logger = logging.getLogger(__name__)

_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
}


@contextmanager
def processor_call(what: str) -> Iterator[None]:
    """Maps a failed processor call made inside the block (`what` names it in the log)."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise mapped(exc, what) from None


def mapped(exc: grpc.aio.AioRpcError, what: str) -> AuditflowError:
    code = exc.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(exc.details() or "invalid argument", violations=_violations(exc))
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(exc.details() or "not found")
    if code in _RETRYABLE:
        logger.info("%s: the processor answered %s: %s", what, code.name, exc.details())
        return Unavailable("the processor is unavailable; try again shortly")
    # The processor refused the gateway itself (credentials, version) or failed: an operator's
    # problem, logged here; the caller can only try again later.
    logger.error("%s: the processor answered %s: %s", what, code.name, exc.details())
    return Unavailable("the processor cannot answer this now (the gateway's log says why); try again later")


def _violations(exc: grpc.aio.AioRpcError) -> list[FieldViolation]:
    try:
        status = rpc_status.from_call(cast(grpc.Call, exc))
    except ValueError:  # details that do not match the status: keep the message only
        return []
    violations: list[FieldViolation] = []
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return violations

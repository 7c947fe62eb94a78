"""gRPC status codes as HTTP statuses, and the JSON error body.

The body keeps what the gRPC error carried: `{"code": <gRPC code number>, "status": <code
name>, "message": ..., "details": [<google.rpc details in proto3 JSON, with "@type">]}`.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2  # noqa: F401  (registers the detail types for JSON)
from grpc_status import rpc_status

logger = logging.getLogger(__name__)

C = grpc.StatusCode

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    C.OK: 200,
    C.CANCELLED: 499,
    C.UNKNOWN: 500,
    C.INVALID_ARGUMENT: 400,
    C.DEADLINE_EXCEEDED: 504,
    C.NOT_FOUND: 404,
    C.ALREADY_EXISTS: 409,
    C.PERMISSION_DENIED: 403,
    C.RESOURCE_EXHAUSTED: 429,
    C.FAILED_PRECONDITION: 409,
    C.ABORTED: 409,
    C.OUT_OF_RANGE: 400,
    C.UNIMPLEMENTED: 501,
    C.INTERNAL: 500,
    C.UNAVAILABLE: 503,
    C.DATA_LOSS: 500,
    C.UNAUTHENTICATED: 401,
}


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status of a gRPC code (the mapping of google.rpc.Code's comments).

    FAILED_PRECONDITION becomes 409 Conflict, not 400. In auditflow it means "the workflow's
    current state refuses this" (a second decision, cancelling a finished workflow): the
    request itself is well formed and would have succeeded against another state, so the
    client should re-read the resource rather than fix its request, which is what 409 tells
    it; 400 is kept for requests that are wrong whatever the state (INVALID_ARGUMENT,
    OUT_OF_RANGE).
    """
    return HTTP_STATUS.get(code, 500)


def error_body(code: grpc.StatusCode, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"code": code.value[0], "status": code.name, "message": message, "details": details or []}


def from_rpc_error(error: grpc.aio.AioRpcError) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body of a failed call, with its google.rpc details decoded."""
    code = error.code()
    details: list[dict[str, Any]] = []
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # details disagree with the status line: keep the status line
        status = None
    if status is not None:
        for detail in status.details:
            try:
                details.append(json_format.MessageToDict(detail, preserving_proto_field_name=True))
            except (TypeError, KeyError, json_format.Error):
                details.append({"@type": detail.type_url})
    message = error.details() or ""
    if code == C.UNAVAILABLE:
        logger.warning("gateway unavailable: %s", message)
        message = "the service is unavailable; try again"
    return http_status(code), error_body(code, message, details)

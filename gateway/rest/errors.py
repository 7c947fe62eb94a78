"""gRPC status codes as HTTP statuses, and the JSON error body.

The body keeps what the gRPC error carried: `{"code": <gRPC code number>, "status": <code
name>, "message": ..., "details": [<google.rpc details in proto3 JSON, with "@type">]}`.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2  # noqa: F401  (registers the detail types for JSON)

from auditflow.errors import AuditflowError
from auditflow.interceptor import details_of, retry_after

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


def from_error(error: AuditflowError) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body of a refused call: the same code, message and google.rpc
    details a gRPC client gets."""
    details = [_detail_json(detail) for detail in details_of(error)]
    return http_status(error.code), error_body(error.code, error.message, details)


def headers_of(error: AuditflowError) -> dict[str, str]:
    """HTTP headers of a refused call: Retry-After (RFC 9110, seconds) past a rate, as the
    gRPC answer's `retry-after` trailer."""
    after = retry_after(error)
    return {"Retry-After": after} if after is not None else {}


def _detail_json(detail: Message) -> dict[str, Any]:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return json_format.MessageToDict(packed, preserving_proto_field_name=True)

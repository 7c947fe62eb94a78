"""The one server interceptor: who is calling, and how errors leave the server.

Every RPC of both services passes through `CallInterceptor`, which
- decides the caller's principal from call metadata and puts it on the context, and
- maps `AuditflowError` to its status code with google.rpc details (ErrorInfo, BadRequest),
  and any other exception to INTERNAL without leaking internals.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from auditflow import principal
from auditflow.errors import DOMAIN, AuditflowError

logger = logging.getLogger(__name__)

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]]


def to_rich_status(error: AuditflowError) -> grpc.Status:
    """The error as a grpc.Status carrying ErrorInfo and, for bad fields, BadRequest."""
    details = []
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    details.append(_pack(info))
    if error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        details.append(_pack(bad))
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


INTERNAL_STATUS = rpc_status.to_status(
    status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; see the server log")
)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str) -> None:
    if isinstance(exc, AuditflowError):
        logger.debug("%s -> %s: %s", method, exc.code.name, exc.message)
        status = to_rich_status(exc)
    else:
        logger.exception("unhandled error in %s", method)
        status = INTERNAL_STATUS
    await context.abort(status.code, status.details, status.trailing_metadata)


def _is_abort(exc: BaseException) -> bool:
    """context.abort() raises an exception of its own; let it through untouched."""
    return type(exc).__name__ == "AbortError"


class CallInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Sets the principal for the call and maps exceptions to status codes."""

    def __init__(self, default_user: str) -> None:
        self._default_user = default_user

    async def intercept_service(  # type: ignore[override]
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _principal(self, metadata: Any) -> principal.Principal:
        return principal.from_metadata(metadata, self._default_user)

    def _wrap_unary(self, behavior: Any, method: str, metadata: Any) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                # Each RPC runs in its own task, so the context variable is the call's own.
                principal.set_current(self._principal(metadata))
                return await behavior(request, context)
            except Exception as exc:
                if _is_abort(exc):
                    raise
                await _abort(context, exc, method)

        return wrapper

    def _wrap_stream(self, behavior: Any, method: str, metadata: Any) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            try:
                principal.set_current(self._principal(metadata))
                async for response in behavior(request, context):
                    yield response
            except Exception as exc:
                if _is_abort(exc):
                    raise
                await _abort(context, exc, method)

        return wrapper

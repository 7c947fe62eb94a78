"""The one server interceptor: who is calling, may they, and how errors leave the server.

Every RPC of both services passes through `CallInterceptor`, which
- authenticates the caller (`auditflow.auth`) and checks the policy table (`auditflow.policy`)
  before the handler runs, and puts the principal on the call's context;
- answers a request that does not parse as INVALID_ARGUMENT (gRPC itself would say UNKNOWN);
- holds the caller to its limits (`auditflow.limits`): its rate per kind of call, and a slot
  of its streams for a stream's life; a call without a principal (one that fails to
  authenticate, or a public method's) is answered at its address's rate
  (`auditflow.strangers`), and a call its caller's role may not make takes its caller's tokens
  all the same (`authorized`): refusing either is work the server does for the caller;
- ends a server stream with the refusal (UNAUTHENTICATED, PERMISSION_DENIED) when its
  caller's credential is revoked while it is open (`auditflow.revocation`);
- maps `AuditflowError` to its status code with google.rpc details (ErrorInfo, BadRequest,
  RetryInfo and the `retry-after` trailer, QuotaFailure), and any other exception to INTERNAL
  without leaking internals;
- with metrics on, counts every call by method and status code and times it
  (`auditflow.metrics`).

Public methods (health, reflection) skip authentication: probes carry no credentials. They
take their address's turns (`auditflow.strangers`), and their streams are held to
`limits.PublicStreams` (a few per peer address, a bound in all). So does a method the server
does not have: UNIMPLEMENTED, which gRPC would otherwise answer at once, as often as asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from auditflow import logs, policy, principal
from auditflow.auth import Authenticator, Presented
from auditflow.errors import DOMAIN, AuditflowError, InvalidArgument, LimitExceeded, RoleRequired, Unauthenticated
from auditflow.limits import Limiter, PublicStreams
from auditflow.metrics import MethodMetrics, RpcMetrics
from auditflow.principal import Principal
from auditflow.revocation import StreamGuard, Watched
from auditflow.strangers import Strangers

logger = logging.getLogger(__name__)

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]]
Context = grpc.aio.ServicerContext[Any, Any]


def details_of(error: AuditflowError) -> list[Message]:
    """The google.rpc details of an error: ErrorInfo, BadRequest for bad fields, RetryInfo
    when the caller may retry after a time, QuotaFailure for a quota."""
    found: list[Message] = [error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)]
    if isinstance(error, LimitExceeded):
        found.extend(_limit_details(error))
    if error.violations:
        found.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.violations
                ]
            )
        )
    return found


def _limit_details(error: LimitExceeded) -> list[Message]:
    found: list[Message] = []
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(math.ceil(error.retry_after * 1e9))
        found.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if error.quota:
        violation = error_details_pb2.QuotaFailure.Violation(subject=error.quota, description=error.message)
        found.append(error_details_pb2.QuotaFailure(violations=[violation]))
    return found


def retry_after(error: BaseException) -> str | None:
    """Whole seconds before a retry may succeed (Retry-After, gRPC's `retry-after`), or None."""
    seconds = getattr(error, "retry_after", None)
    return str(max(1, math.ceil(seconds))) if seconds is not None else None


def to_rich_status(error: AuditflowError) -> grpc.Status:
    """The error as a grpc.Status carrying its details (and `retry-after` when it has one)."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=map(_pack, details_of(error)))
    rich = rpc_status.to_status(status)
    after = retry_after(error)
    if after is None:
        return rich
    return _Status(rich.code, rich.details, (*rich.trailing_metadata, ("retry-after", after)))


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


INTERNAL_STATUS = rpc_status.to_status(
    status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; see the server log")
)


def log_refusal(method: str, exc: BaseException) -> None:
    """How both adapters log a call that ended in an error (never with its credentials)."""
    if isinstance(exc, AuditflowError):
        logger.debug("%s -> %s: %s", method, exc.code.name, exc.message)
    else:
        logger.error("unhandled error in %s", method, exc_info=exc)


async def _abort(context: Context, exc: BaseException, method: str) -> None:
    log_refusal(method, exc)
    status = to_rich_status(exc) if isinstance(exc, AuditflowError) else INTERNAL_STATUS
    await context.abort(status.code, status.details, status.trailing_metadata)


def _is_abort(exc: BaseException) -> bool:
    """context.abort() raises an exception of its own; let it through untouched."""
    return type(exc).__name__ == "AbortError"


class _Malformed:
    """What the tolerant deserializer hands on for bytes that are not the request message."""

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name


def _tolerant(deserialize: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None
    name = method.rsplit("/", 1)[-1]

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # DecodeError, RecursionError (nesting), anything the parser raises
            return _Malformed(name)

    return parse


def _passing_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """A response serializer that sends bytes as they are, or an object's `wire` bytes: a
    handler may yield a message it encoded once for many streams (the gateway's watchers), or
    answer with one it encoded off the event loop (the gateway's large answers)."""
    if serialize is None:
        return None

    def serializer(message: Any) -> bytes:
        if isinstance(message, bytes):
            return message
        wire = getattr(message, "wire", None)
        return wire if isinstance(wire, bytes) else serialize(message)

    return serializer


def peer_address(context: Context) -> str | None:
    """The IP address of the caller ("ipv4:1.2.3.4:5", "ipv6:[::1]:5"), None for others."""
    peer = urllib.parse.unquote(context.peer() or "")  # (gRPC sends "ipv6:%5B::1%5D:5")
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return None


def tls_identities(context: Context) -> tuple[str, ...]:
    """Identities of the client certificate the handshake verified (SANs, then the CN)."""
    auth = context.auth_context()
    if not auth or b"ssl" not in auth.get("transport_security_type", ()):
        return ()
    names = [*auth.get("x509_subject_alternative_name", ()), *auth.get("x509_common_name", ())]
    return tuple(n.decode("utf-8", "replace") for n in names)


class CallInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates, authorizes, sets the principal and maps exceptions to status codes."""

    def __init__(
        self,
        authenticator: Authenticator,
        metrics: RpcMetrics | None = None,
        limiter: Limiter | None = None,
        guard: StreamGuard | None = None,
        public_streams: PublicStreams | None = None,
        strangers: Strangers | None = None,
    ) -> None:
        self._auth = authenticator
        self._strangers = strangers
        self._metrics = metrics
        self._limiter = limiter
        self._guard = guard
        self._public_streams = public_streams or PublicStreams(total=0)

    async def intercept_service(  # type: ignore[override]
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:  # (gRPC would answer UNIMPLEMENTED at once, to anyone, as often as asked)
            return grpc.stream_stream_rpc_method_handler(self._unknown(method)) if self._strangers is not None else None
        if policy.is_public(method):
            return self._public(handler, method)
        metadata = handler_call_details.invocation_metadata or ()
        deserialize = _tolerant(handler.request_deserializer, method)
        if handler.unary_unary is not None:
            measured = self._metrics.method(method, "unary") if self._metrics is not None else None
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, metadata, measured),
                request_deserializer=deserialize,
                response_serializer=_passing_bytes(handler.response_serializer),
            )
        if handler.unary_stream is not None:
            measured = self._metrics.method(method, "server_stream") if self._metrics is not None else None
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, metadata, measured),
                request_deserializer=deserialize,
                response_serializer=_passing_bytes(handler.response_serializer),
            )
        return handler  # (no client-streaming RPCs outside the public ones)

    def _public(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        """A public method's handler: it waits its address's turn (`strangers`, no principal),
        and a stream holds a slot of its peer's public streams."""
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_public_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_public(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_public(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unknown(self, method: str) -> Callable[..., Any]:
        """A method this server does not serve: UNIMPLEMENTED, at its address's turn (no
        principal: nobody's limit holds it). A handler of any shape reads nothing first."""

        async def unknown(requests: Any, context: Context) -> AsyncIterator[Any]:
            await self._anonymous_turn(context)
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"this server has no method {method[:200]!r}")
            yield  # (never reached: a generator, as OpenTelemetry's interceptor iterates a stream's handler)

        return unknown

    def _wrap_public_unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def checked(request: Any, context: Context) -> Any:
            await self._anonymous_turn(context)
            return await behavior(request, context)

        return checked

    async def _anonymous_turn(self, context: Context) -> None:
        if self._strangers is not None:
            await self._strangers.wait_turn(peer_address(context))

    def _wrap_public(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        """`behavior` in a slot of the peer's public streams, in its own shape: an async
        generator (reflection) or a coroutine that writes to the context (health Watch)."""
        if inspect.isasyncgenfunction(behavior):

            async def generator(request: Any, context: Context) -> AsyncIterator[Any]:
                give_back = await self._public_slot(context, method)
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    give_back()

            return generator

        async def writer(request: Any, context: Context) -> None:
            give_back = await self._public_slot(context, method)
            try:
                await behavior(request, context)
            finally:
                give_back()

        return writer

    async def _public_slot(self, context: Context, method: str) -> Callable[[], None]:
        """A slot of the peer's public streams, given back when the call is done (however it
        ends: a stream cancelled while it sends is never resumed to run its `finally`); or the
        call ends RESOURCE_EXHAUSTED."""
        await self._anonymous_turn(context)
        try:
            give_back = self._public_streams.take(peer_address(context))
        except LimitExceeded as exc:
            await _abort(context, exc, method)
            raise  # (abort raises; for the type checker)
        context.add_done_callback(lambda _: give_back())  # type: ignore[arg-type]  # (stubs: a class)
        return give_back

    def _presented(self, context: Context, metadata: Any) -> Presented:
        # (the handshake's identities are read only where a service may present one: the
        # look-up builds the whole authentication context, on every call)
        identities = tls_identities(context) if self._auth.service_identities else ()
        return self._auth.presented(metadata, peer_address(context), identities)

    async def _admit(self, request: Any, presented: Presented, method: str) -> Principal:
        """Authenticate, authorize, check the caller's rate and set the principal; then refuse
        a malformed request (after authentication, so that strangers learn nothing from it)."""
        caller = await authenticated(self._auth, presented, self._strangers)
        size = request.ByteSize() if isinstance(request, Message) else 0
        # (a resumed collection watch asks for no first page: its catch-up is paced as it goes)
        page = None if getattr(request, "resume_token", "") else getattr(request, "page_size", None)
        await authorized(method, caller, self._limiter, page, size)
        if self._limiter is not None:
            await self._limiter.admit(method, caller, page, size)
        # Each RPC runs in its own task, so the context variables are the call's own.
        principal.set_current(caller)
        logs.bind_workflow(request)
        if isinstance(request, _Malformed):
            raise InvalidArgument(f"the request is not a valid {request.message_name} message")
        return caller

    def _wrap_unary(self, behavior: Any, method: str, metadata: Any, measured: MethodMetrics | None) -> Any:
        async def wrapper(request: Any, context: Context) -> Any:
            with _Timed(measured) as timed:
                try:
                    await self._admit(request, self._presented(context, metadata), method)
                    return await behavior(request, context)
                except Exception as exc:
                    await timed.refuse(context, exc, method)

        return wrapper

    def _wrap_stream(self, behavior: Any, method: str, metadata: Any, measured: MethodMetrics | None) -> Any:
        """The stream's responses as the handler yields them, in this one generator (no layer
        per message between the handler and gRPC), until the guard refuses its caller: then
        the refusal is raised (the stream ends with its status, not CANCELLED). While a
        response is being sent the guard does not cancel: the refusal is raised when gRPC
        asks for the next one."""

        async def wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
            with _Timed(measured) as timed:
                try:
                    presented = self._presented(context, metadata)
                    caller = await self._admit(request, presented, method)
                    with self._stream_slot(caller), self._watching(presented, method) as watched:
                        responses = behavior(request, context)
                        try:
                            if watched is None:
                                async for response in responses:
                                    yield response
                                return
                            async for response in responses:
                                watched.sending = True
                                yield response
                                watched.sending = False
                                if watched.refusal is not None:
                                    break
                        except asyncio.CancelledError:
                            if watched is None or watched.refusal is None:
                                raise
                            watched.task.uncancel()
                        finally:
                            await close_stream(responses)
                        if watched.refusal is not None:
                            raise watched.refusal
                except Exception as exc:
                    await timed.refuse(context, exc, method)

        return wrapper

    def _stream_slot(self, caller: Principal) -> contextlib.AbstractContextManager[None]:
        """One of the caller's stream slots for the stream's life (RESOURCE_EXHAUSTED if none)."""
        return self._limiter.stream(caller) if self._limiter is not None else contextlib.nullcontext()

    def _watching(self, presented: Presented, method: str) -> contextlib.AbstractContextManager[Watched | None]:
        """The stream watched for its life, ended if its caller's credential is revoked."""
        return self._guard.watching(presented, method) if self._guard is not None else contextlib.nullcontext()


async def authenticated(authenticator: Authenticator, presented: Presented, strangers: Strangers | None) -> Principal:
    """The caller; or UNAUTHENTICATED, answered when its address's turn comes (`strangers`)."""
    try:
        return await authenticator.authenticate(presented)
    except Unauthenticated:
        if strangers is not None:
            await strangers.wait_turn(presented.peer)
        raise


async def authorized(method: str, caller: Principal, limiter: Limiter | None, page: object, size: int) -> None:
    """Check the policy table. A call it refuses takes its caller's tokens all the same (as
    the Kubernetes API server's priority and fairness, which comes before authorization):
    refusing it is work too, and past the tokens it is refused RESOURCE_EXHAUSTED like any
    other call, held as long. A call refused for another reason takes none."""
    try:
        policy.authorize(method, caller)
    except RoleRequired:
        if limiter is not None:
            await limiter.admit(method, caller, page, size)
        raise


async def close_stream(responses: AsyncIterator[Any]) -> None:
    """Close a stream's async generator now (its `finally` runs), not when it is collected."""
    aclose = getattr(responses, "aclose", None)
    if aclose is not None:
        await aclose()


class _Timed:
    """One call, unary or stream, counted and timed in its method's metrics with the status it
    ended with: OK, the one `refuse` gave it, or CANCELLED (a client that went away)."""

    __slots__ = ("_code", "_measured", "_started")

    def __init__(self, measured: MethodMetrics | None) -> None:
        self._measured = measured
        self._started = 0.0
        self._code = ""

    def __enter__(self) -> _Timed:
        self._started = time.perf_counter()
        if self._measured is not None:
            self._measured.started.inc()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self._measured is not None:
            code = self._code or ("OK" if exc is None else "CANCELLED")
            self._measured.done(code, time.perf_counter() - self._started)

    async def refuse(self, context: Context, exc: Exception, method: str) -> None:
        """End the call that raised `exc` with its status; an abort passes untouched."""
        self._code = _code_name(exc, context)
        if _is_abort(exc):
            raise exc
        await _abort(context, exc, method)


def _code_name(exc: BaseException, context: Context) -> str:
    """The status code a failed call ends with, by name."""
    if isinstance(exc, AuditflowError):
        return exc.code.name
    if _is_abort(exc):
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return "INTERNAL"

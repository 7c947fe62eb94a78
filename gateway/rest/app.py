"""The aiohttp application: one handler per descriptor route, calling the service's handlers.

`RestApp(api, authenticator)` serves the routes of auditflow.v1.WorkflowService. Each
request is authenticated with the same `Authenticator` and checked against the same policy
table as a gRPC call (from its `Authorization` header, a trusted proxy's header and the
HTTP peer's address), then the request message built from the path, query and body is
handed to the application layer the gRPC adapter calls (`gateway.api`): one validation, one
error mapping, no loopback. Server-streaming RPCs are served as Server-Sent Events, or as
newline-delimited JSON when the client asks for `application/x-ndjson`, from the hub's
items: each event is encoded once for every watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc
from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from auditflow import logs, metrics, principal
from auditflow.auth import Authenticator, Presented
from auditflow.config import ConfigError
from auditflow.connections import ConnectionSettings
from auditflow.errors import AuditflowError, Unauthenticated
from auditflow.interceptor import authenticated, authorized, close_stream, log_refusal
from auditflow.limits import Limiter
from auditflow.revocation import StreamGuard, Watched
from auditflow.serving import check_port_free
from auditflow.strangers import Strangers
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway import messages
from gateway.encoded import Written
from gateway.rest import browser, errors, hooks, httplog, openapi, page
from gateway.rest.routes import BadRequest, Route, build_request, response_json, routes_of
from gateway.rest.site import BoundedSite

logger = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
MAX_BODY_BYTES = 4 * 1024 * 1024  # the gRPC server's own limit
RETRY = b"retry: 1000\n\n"  # an SSE client's reconnection delay, ms
END = b"event: end\ndata: {}\n\n"

# A burst of thousands of browsers opening their streams at once: aiohttp's default (128)
# overflows, and each client retries after a growing delay (10,000 took 113 s; 10 s with
# this). The kernel caps it at net.core.somaxconn (4096 by default).
LISTEN_BACKLOG = 16384
# A body or an answer larger than this is parsed from or turned into JSON on a worker thread.
OFF_LOOP_BYTES = 64 * 1024
SERVICE = wpb.DESCRIPTOR.services_by_name["WorkflowService"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
C = grpc.StatusCode


def _json_response(status: int, body: Any) -> web.Response:
    return web.Response(status=status, text=_dumps(body), content_type="application/json")


def _dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def error_response(status: int, code: grpc.StatusCode, message: str) -> web.Response:
    return _json_response(status, errors.error_body(code, message))


def refusal(exc: BaseException, where: str) -> web.Response:
    """The HTTP answer to a handler's exception, as the interceptor answers it over gRPC."""
    log_refusal(where, exc)
    if not isinstance(exc, AuditflowError):
        return error_response(500, C.INTERNAL, "internal error; see the server log")
    response = _json_response(*errors.from_error(exc))
    response.headers.update(errors.headers_of(exc))
    if isinstance(exc, Unauthenticated):  # RFC 6750: say how to authenticate, and what was wrong
        challenge = 'Bearer realm="auditflow"' + (', error="invalid_token"' if exc.invalid_token else "")
        response.headers["WWW-Authenticate"] = challenge
    return response


_HTTP_TO_CODE = {400: C.INVALID_ARGUMENT, 404: C.NOT_FOUND, 405: C.UNIMPLEMENTED, 413: C.RESOURCE_EXHAUSTED}


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (unknown path, wrong method, too large) in the same JSON shape;
    anything unexpected is a 500 with no internals."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_TO_CODE.get(exc.status, C.UNKNOWN)
        response = error_response(exc.status, code, exc.reason)
        for name in ("Allow",):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, C.INTERNAL, "internal error; see the server log")


def measured_middleware(templates: dict[str, str]) -> Any:
    """REST requests by route (the path's template, e.g. /workflows/{workflow_id}: never the
    path itself, so the labels stay bounded), method and status, and their time (a stream's
    whole life). `templates`: aiohttp's pattern of each route → its template."""

    @web.middleware
    async def measured(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            pattern = resource.canonical if resource is not None else "unmatched"
            route = templates.get(pattern, pattern)
            metrics.REST_REQUESTS.labels(route, request.method, str(status)).inc()
            metrics.REST_SECONDS.labels(route, request.method).observe(time.perf_counter() - started)

    return measured


def anonymous_middleware(strangers: Strangers, api_handlers: set[Handler]) -> Any:
    """A request for anything but the API (health, readiness, the OpenAPI document, the page,
    a path that does not exist, a preflight CORS did not answer) needs no credentials: it waits
    its address's turn (`auditflow.strangers`). The API's requests authenticate, and wait only
    if that fails."""

    @web.middleware
    async def anonymous(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.handler not in api_handlers:
            await strangers.wait_turn(request.remote)
        return await handler(request)

    return anonymous


def cors_middleware(origins: frozenset[str]) -> Any:
    """Allow the listed origins ("*" = any) to call the API from a browser."""

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and ("*" in origins or origin in origins)
        if request.method == "OPTIONS" and allowed and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization, Last-Event-ID"
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if allowed and origin is not None and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    return cors


class Readiness(Protocol):
    """What `/readyz` asks: (ready, what was checked → "ok" or what is wrong)."""

    async def check(self) -> tuple[bool, dict[str, str]]: ...


class RestApp:
    """The routes of one service bound to its servicer (the object the gRPC server serves)."""

    def __init__(
        self,
        api: object,
        authenticator: Authenticator,
        service: ServiceDescriptor = SERVICE,
        *,
        guard: StreamGuard,
        cors_origins: frozenset[str] = frozenset(),
        max_body_bytes: int = MAX_BODY_BYTES,
        measured: bool = False,
        readiness: Readiness | None = None,
        limiter: Limiter | None = None,
        strangers: Strangers | None = None,
    ) -> None:
        self.api = api
        self._limiter = limiter
        self._strangers = strangers
        self._readiness = readiness
        self._origins = cors_origins
        self.authenticator = authenticator
        self.routes = routes_of(service)
        self.max_body_bytes = max_body_bytes
        self._streams: set[asyncio.Task[Any]] = set()
        self._guard = guard
        self._closing = False
        middlewares: list[Any] = [_errors_as_json]
        # (the API's handlers authenticate; any other path is answered to anyone, at its address's
        # turn: inside CORS, which answers an allowed origin's preflight for the API first)
        self._api_handlers: set[Handler] = set()
        if strangers is not None:
            middlewares.insert(0, anonymous_middleware(strangers, self._api_handlers))
        if cors_origins:
            middlewares.insert(0, cors_middleware(cors_origins))
        if measured:
            templates = {re.sub(r"\{(\w+):[^}]*\}", r"{\1}", r.path): r.template for r in self.routes}
            middlewares.insert(0, measured_middleware(templates))  # (keys: aiohttp's canonical form)
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
        for route in self.routes:
            handler = self._handler(route)
            self._api_handlers.add(handler)
            self.app.router.add_route(route.http_method, route.path, handler)
        self.openapi = openapi.document(self.routes)
        self.app.router.add_get("/openapi.json", self._openapi)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        page.add_routes(self.app)
        self.app.on_response_prepare.append(browser.add_headers)

    async def _openapi(self, request: web.Request) -> web.StreamResponse:
        return _json_response(200, self.openapi)

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        """Alive: the process answers (no credentials; says nothing about the database)."""
        return _json_response(200, {"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        """Ready to serve: 200, or 503 with what is wrong (no credentials, no internals)."""
        if self._readiness is None:
            return _json_response(200, {"status": "ready"})
        ready, checks = await self._readiness.check()
        return _json_response(200 if ready else 503, {"status": "ready" if ready else "not ready", "checks": checks})

    def cancel_streams(self) -> None:
        """End every open stream (the server is stopping)."""
        self._closing = True
        for task in list(self._streams):
            task.cancel()

    async def _admit(self, route: Route, request: web.Request) -> tuple[Message | web.Response, Presented]:
        """Authenticate the HTTP caller, check the policy, read the request and hold the caller
        to its rate, as the interceptor does for gRPC; also what the caller presented (a
        stream's credential is checked again after reloads)."""
        presented = self.authenticator.presented(request.headers.items(), request.remote)
        caller = await authenticated(self.authenticator, presented, self._strangers)
        resumed = request.query.get("resume_token") or request.headers.get("Last-Event-ID")
        page = None if resumed else request.query.get("page_size", "")  # (as the interceptor's)
        size = request.content_length
        await authorized(route.rpc_path, caller, self._limiter, page, size or 0)  # (a body refused: never read)
        browser.check_write(request, caller, self._origins)
        principal.set_current(caller)  # (each request runs in a task of its own)
        if self._limiter is not None:  # (before the body is parsed: a refusal costs no parsing)
            if size is None and route.body:  # a chunked body: its size once read (aiohttp keeps it)
                await self._limiter.check(route.rpc_path, caller)  # (past the rate: not read at all)
                try:
                    size = len(await request.read())
                except web.HTTPRequestEntityTooLarge:
                    return self._too_large(), presented
            await self._limiter.admit(route.rpc_path, caller, page, size or 0)
        return await self._request_message(route, request), presented

    def _stream_slot(self) -> contextlib.AbstractContextManager[None]:
        """One of the caller's stream slots for the stream's life (LimitExceeded if none)."""
        if self._limiter is None:
            return contextlib.nullcontext()
        return self._limiter.stream(principal.current())

    def _handler(self, route: Route) -> Handler:
        call = getattr(self.api, route.method.name)
        if route.method.name in messages.PREBUILT_STREAMS:  # (its messages made as JSON where they are built)
            call = functools.partial(call, encoding="json")
        if route.streaming:

            async def streaming(request: web.Request) -> web.StreamResponse:
                with contextlib.ExitStack() as held:
                    try:
                        message, presented = await self._admit(route, request)
                        if isinstance(message, web.Response):
                            return message
                        held.enter_context(self._stream_slot())
                    except AuditflowError as exc:
                        return refusal(exc, route.rpc_path)
                    download = hooks.DOWNLOADS.get(route.method.name)
                    if download is not None:
                        return await self._download(route, request, download, message, call(message))
                    return await self._stream(route, request, presented, call(message))

            return streaming

        hook = hooks.RESPONSE_HOOKS.get(route.method.name)
        large = route.method.name in messages.LARGE_ANSWERS
        prebuilt = route.method.name in messages.PREBUILT_ANSWERS
        if prebuilt and (hook is not None or route.response_body):
            raise ValueError(f"{route.method.name}: an answer built apart is sent whole, without a hook")

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                message, _ = await self._admit(route, request)
                if isinstance(message, web.Response):
                    return message
                if prebuilt:  # (its JSON made apart, sent as it is)
                    body: bytes = await call(message, encoding="json")
                    return web.Response(body=body, content_type="application/json", charset="utf-8")
                answer: Message = await call(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                return refusal(exc, route.rpc_path)
            # (a long answer's JSON takes milliseconds; a page's size alone would take one to learn)
            if large or answer.ByteSize() > OFF_LOOP_BYTES:
                return await asyncio.to_thread(_answer, route, hook, answer)
            return _answer(route, hook, answer)

        return handle

    def _too_large(self) -> web.Response:
        return error_response(413, C.RESOURCE_EXHAUSTED, f"the body exceeds {self.max_body_bytes} bytes")

    async def _request_message(self, route: Route, request: web.Request) -> Message | web.Response:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._too_large()
        try:
            body = await request.read() if route.body else b""
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        try:
            query = iter(request.query.items())
            if len(body) > OFF_LOOP_BYTES:  # (a large body's JSON takes milliseconds to parse)
                message = await asyncio.to_thread(build_request, route, request.match_info, query, body)
            else:
                message = build_request(route, request.match_info, query, body)
            resume = hooks.RESUME_FIELDS.get(route.method.name)
            last_event_id = request.headers.get("Last-Event-ID")
            if resume and last_event_id is not None and last_event_id.strip():
                resume_at: str | int = last_event_id.strip()
                if isinstance(getattr(message, resume), int):
                    try:
                        resume_at = int(last_event_id)
                    except ValueError as exc:
                        raise BadRequest(f"Last-Event-ID must be a sequence number: {last_event_id!r}") from exc
                setattr(message, resume, resume_at)
        except BadRequest as exc:
            return error_response(400, C.INVALID_ARGUMENT, str(exc))
        logs.bind_workflow(message)  # (the request's own task: its records only)
        return message

    async def _stream(
        self, route: Route, request: web.Request, presented: Presented, items: AsyncIterator[Written]
    ) -> web.StreamResponse:
        ndjson = NDJSON in request.headers.get("Accept", "")
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        metrics.REST_STREAMS.inc()
        try:
            try:  # the first message (or the error) decides the HTTP status
                first: Written | None = await anext(items)
            except StopAsyncIteration:
                first = None
            except Exception as exc:
                return refusal(exc, route.rpc_path)
            response = web.StreamResponse(status=200)
            response.content_type = NDJSON if ndjson else "text/event-stream"
            response.headers["Cache-Control"] = "no-cache"
            response.headers["X-Accel-Buffering"] = "no"
            await response.prepare(request)
            with self._guard.watching(presented, route.rpc_path) as watched:
                await self._send(response, first, items, ndjson, watched)
            await asyncio.sleep(0)  # (the other watchers of this event send it before this one cleans up)
            return response
        finally:
            metrics.REST_STREAMS.dec()
            self._streams.discard(task)
            await close_stream(items)

    async def _send(
        self,
        response: web.StreamResponse,
        first: Written | None,
        items: AsyncIterator[Written],
        ndjson: bool,
        watched: Watched,
    ) -> None:
        """A stream's messages after the first decided its status; it ends with an error, when
        the client goes away, or when we stop or the caller's credential is revoked."""
        try:
            if not ndjson:
                await _write_events(response, first, items)
            elif first is not None:
                await response.write(first.ndjson)
                async for item in items:
                    await response.write(item.ndjson)
        except AuditflowError as exc:
            log_refusal(watched.rpc_path, exc)
            await _write_error(response, exc, ndjson)
        except ConnectionResetError:  # the client went away; it resumes with Last-Event-ID
            logger.debug("stream client of %s disconnected", watched.rpc_path)
        except asyncio.CancelledError:
            if watched.refusal is None and not self._closing:
                raise
            # We are stopping, or the caller's credential was revoked, and cancelled the
            # stream: end it cleanly (when stopping, the browser reconnects to us restarted
            # or to another replica; when revoked, it is told why).
            watched.task.uncancel()
            if watched.refusal is not None:
                with contextlib.suppress(ConnectionResetError):
                    await _write_error(response, watched.refusal, ndjson)

    async def _download(
        self, route: Route, request: web.Request, download: hooks.Download, message: Message, chunks: AsyncIterator[Any]
    ) -> web.StreamResponse:
        """A streaming RPC as one file. The first chunk (or the error) decides the status; an
        error later cuts the transfer (the client sees an incomplete body, never a whole-looking
        file)."""
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                first = None
            except Exception as exc:
                return refusal(exc, route.rpc_path)
            response = web.StreamResponse(status=200)
            response.content_type = download.content_type(message)
            response.headers["Content-Disposition"] = f'attachment; filename="{download.filename(message)}"'
            response.headers["Cache-Control"] = "no-store"
            await response.prepare(request)
            try:
                if first is not None:
                    await response.write(first.data)
                    async for chunk in chunks:
                        await response.write(chunk.data)
                await response.write_eof()
            except AuditflowError as exc:
                log_refusal(route.rpc_path, exc)
                if request.transport is not None:
                    request.transport.close()
            except ConnectionResetError:
                logger.debug("download client of %s disconnected", request.path)
            return response
        finally:
            self._streams.discard(task)
            await close_stream(chunks)


def _answer(route: Route, hook: hooks.ResponseHook | None, answer: Message) -> web.Response:
    """The HTTP response of a unary call's answer, in the route's JSON (reshaped by its hook)."""
    body = response_json(route, answer)
    status = 200
    if hook is not None:
        status, body = hook(answer, body)
    return _json_response(status, body)


async def _write_events(response: web.StreamResponse, first: Written | None, items: AsyncIterator[Written]) -> None:
    """Server-Sent Events: the `retry:` line goes in the first message's send, and `event:
    end` (an SSE client does not reconnect to a finished stream) in the last one's: a
    watcher's stream costs one send per wake-up, its first and last included."""
    head, ended = RETRY, False
    if first is not None:
        ended = first.ends
        await response.write(head + _event(first))
        head = b""
        async for item in items:
            ended = item.ends
            await response.write(_event(item))
    if not ended:
        await response.write(head + END)


def _event(item: Written) -> bytes:
    return item.sse + END if item.ends else item.sse


async def _write_error(response: web.StreamResponse, exc: AuditflowError, ndjson: bool) -> None:
    """End a stream already under way with the refusal that ends it."""
    _, body = errors.from_error(exc)
    text = _dumps({"error": body}) + "\n" if ndjson else f"event: error\ndata: {_dumps(body)}\n\n"
    await response.write(text.encode())


class RestGateway:
    """The REST port of a gateway: `start()`, then `stop()`."""

    def __init__(
        self,
        api: object,
        authenticator: Authenticator,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        cors_origins: frozenset[str] = frozenset(),
        max_body_bytes: int = MAX_BODY_BYTES,
        ssl_context: ssl.SSLContext | None = None,
        measured: bool = False,
        readiness: Readiness | None = None,
        limiter: Limiter | None = None,
        connections: ConnectionSettings | None = None,
        guard: StreamGuard,
        strangers: Strangers | None = None,
    ) -> None:
        check_port_free(host, port)  # (a port in use fails here, before anything starts)
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.connections = connections or ConnectionSettings()
        self.rest = RestApp(
            api,
            authenticator,
            cors_origins=cors_origins,
            max_body_bytes=max_body_bytes,
            measured=measured,
            readiness=readiness,
            limiter=limiter,
            guard=guard,
            strangers=strangers,
        )
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen; a port in use is a ConfigError (one line), as for the gRPC port."""
        check_port_free(self.host, self.port)
        runner = web.AppRunner(
            self.rest.app,
            access_log=None,
            shutdown_timeout=2.0,
            logger=httplog.SERVER_LOGGER,
            keepalive_timeout=self.connections.http_idle_timeout,
        )
        await runner.setup()
        site = BoundedSite(
            runner, self.host, self.port, self.connections, ssl_context=self.ssl_context, backlog=LISTEN_BACKLOG
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot listen on {self.host}:{self.port} (REST): {exc.strerror or exc}") from None
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])
        logger.info("REST API and status page on %s", self.url)

    async def stop(self) -> None:
        self.rest.cancel_streams()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

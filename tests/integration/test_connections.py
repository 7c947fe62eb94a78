"""Connections a client opens and leaves: closed after the handshake timeout, bounded in
number (one log line for many refusals), and a gateway short of file descriptors that keeps
serving its other clients. Real servers on real ports; the last test runs the gateway as a
subprocess with a lowered RLIMIT_NOFILE."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from auditflow import connections, metrics
from auditflow.connections import RESERVED_FDS, ConnectionSettings
from auditflow.limits import PUBLIC_STREAMS_PER_PEER
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway.server import Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from processor.server import create_server as create_processor
from processor.settings import Settings as ProcessorSettings
from tests.support import auth, lowfd
from tests.support.cluster import Pair, wait_http

CLOSED_WITHIN = 30.0  # seconds a test waits for the server to close a connection (a loaded machine)


@contextlib.asynccontextmanager
async def gateway_with(tmp_path: Path, connections: ConnectionSettings) -> AsyncIterator[Gateway]:
    """A gateway alone (its processor link stays down: WhoAmI and the REST port need none)."""
    gateway = create_gateway(
        "127.0.0.1:0",
        GatewaySettings(
            **auth.gateway_settings(),
            database_url=f"sqlite:///{tmp_path / 'g.db'}",
            processor_target="127.0.0.1:9",
            rest_port=0,
            connections=connections,
        ),
    )
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop(0)


def silent(port: int, n: int) -> list[socket.socket]:
    """`n` connections that send nothing."""
    sockets = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setblocking(False)
        sockets.append(s)
    return sockets


def is_closed(s: socket.socket) -> bool:
    try:
        return s.recv(4096) == b"" or is_closed(s)  # (a refusal's answer, then the end)
    except BlockingIOError:
        return False
    except OSError:
        return True


async def wait_closed(sockets: list[socket.socket], within: float = CLOSED_WITHIN) -> None:
    deadline = time.monotonic() + within
    open_ = list(sockets)
    while open_ and time.monotonic() < deadline:
        open_ = [s for s in open_ if not is_closed(s)]
        await asyncio.sleep(0.05)
    assert not open_, f"{len(open_)} of {len(sockets)} silent connections still open after {within} s"


async def whoami(target: str) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        answer = await wpb_grpc.WorkflowServiceStub(channel).WhoAmI(
            wpb.WhoAmIRequest(), metadata=auth.bearer("erin"), timeout=10
        )
        return answer.principal


async def test_a_connection_that_sends_nothing_is_closed_after_the_handshake_timeout(tmp_path: Path) -> None:
    bounds = ConnectionSettings(handshake_timeout=1.0, http_idle_timeout=1.0)
    async with gateway_with(tmp_path, bounds) as gateway:
        assert gateway.rest is not None
        grpc_silent, rest_silent = silent(gateway.port, 5), silent(gateway.rest.port, 5)
        try:
            await asyncio.gather(wait_closed(grpc_silent), wait_closed(rest_silent))
            assert await whoami(gateway.address) == "erin"  # (a client that speaks is served)
        finally:
            for s in grpc_silent + rest_silent:
                s.close()


async def test_past_its_maximum_a_port_refuses_new_connections_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The gRPC port's looks 0.2 s apart (REST's lines stay 10 s apart).
    monkeypatch.setattr(connections, "REFUSAL_LOG_INTERVAL", 0.2)
    bounds = ConnectionSettings(handshake_timeout=60.0, http_idle_timeout=60.0, max_connections=4)
    async with gateway_with(tmp_path, bounds) as gateway:
        assert gateway.rest is not None
        held = silent(gateway.rest.port, 4)
        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(100):
                async with http.get(f"{gateway.rest.url}/healthz") as answer:
                    statuses.append(answer.status)
                    assert answer.status == 503 and answer.headers["Retry-After"] == "1", statuses
            grpc_port = f"gRPC port 127.0.0.1:{gateway.port}"
            assert not lines(caplog, grpc_port)  # (it held none: no line)
            grpc_held = silent(gateway.port, 4)
            await asyncio.sleep(0)  # (the refused ones below land after these)
            grpc_refused = silent(gateway.port, 3)
            await wait_closed(grpc_refused)
            full = await logged(caplog, grpc_port)  # (gRPC's core refuses without a word: the gateway says it)
            assert full == f"{grpc_port}: holds its maximum of 4 connections (--max-connections): " + (
                "new ones are closed at once"
            )
            for s in held + grpc_held:
                s.close()
            refusals = lines(caplog, "REST port")
            assert len(refusals) == 1 and "refused 1 connection" in refusals[0], refusals  # not 100 lines
            assert f"REST port 127.0.0.1:{gateway.rest.port}" in refusals[0] and "--max-connections" in refusals[0]
            assert await served_again(http, f"{gateway.rest.url}/healthz")  # the held ones gone


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """The connection bounds' log lines that contain `text`."""
    return [r.getMessage() for r in caplog.records if r.name == "auditflow.connections" and text in r.getMessage()]


async def logged(caplog: pytest.LogCaptureFixture, text: str, within: float = CLOSED_WITHIN) -> str:
    """The first such line, once there is one."""
    deadline = time.monotonic() + within
    while not lines(caplog, text):
        assert time.monotonic() < deadline, f"no line with {text!r} after {within} s"
        await asyncio.sleep(0.05)
    return lines(caplog, text)[0]


async def served_again(http: aiohttp.ClientSession, url: str, within: float = CLOSED_WITHIN) -> bool:
    """True once `url` answers 200 (the server has seen the held connections close)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url) as answer:
                if answer.status == 200:
                    return True
        await asyncio.sleep(0.05)
    return False


async def test_a_stranger_holds_a_few_health_and_reflection_streams_at_most(tmp_path: Path) -> None:
    """Health Watch and reflection need no credentials, so no principal's stream limit holds
    them: one address holds at most PUBLIC_STREAMS_PER_PEER; a slot frees when its stream ends."""
    refusals = public_refusals()
    async with (
        gateway_with(tmp_path, ConnectionSettings(max_public_streams=64)) as gateway,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        watches = [watch(health) for _ in range(PUBLIC_STREAMS_PER_PEER - 1)]
        for held in watches:
            assert (await held.read()).status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
        await reflection.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        assert (await reflection.read()).list_services_response.service  # the last slot, served
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watch(health).read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"{PUBLIC_STREAMS_PER_PEER} health or reflection streams are open" in str(caught.value.details())
        assert quota_subject(caught.value) == "public streams of one address"
        assert public_refusals() == refusals + 1
        # A probe's Check still answers, and so does a person's call.
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
        assert await whoami(gateway.address) == "erin"
        await reflection.done_writing()
        assert await reflection.read() == grpc.aio.EOF  # (the stream ends: its slot frees)
        assert (await opened(health)).status == health_pb2.HealthCheckResponse.SERVING
        for held in watches:
            held.cancel()


async def test_the_processor_bounds_them_too_and_counts_its_refusals_in_its_own_metrics(tmp_path: Path) -> None:
    processor = create_processor(
        "127.0.0.1:0", ProcessorSettings(**auth.processor_settings(), database_url=f"sqlite:///{tmp_path / 'p.db'}")
    )
    await processor.start()
    counted = {"limit": "public_streams"}
    before = metrics.PROCESSOR.registry.get_sample_value("auditflow_limit_refusals_total", counted) or 0.0
    try:
        async with grpc.aio.insecure_channel(processor.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = [watch(health) for _ in range(PUBLIC_STREAMS_PER_PEER)]
            for held in watches:
                await held.read()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await watch(health).read()
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            after = metrics.PROCESSOR.registry.get_sample_value("auditflow_limit_refusals_total", counted)
            assert after == before + 1  # (where the processor's metrics endpoint serves it)
            for held in watches:
                held.cancel()
    finally:
        await processor.stop(0)


def watch(health: health_pb2_grpc.HealthStub) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
    return health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=CLOSED_WITHIN)


async def opened(health: health_pb2_grpc.HealthStub, within: float = CLOSED_WITHIN) -> health_pb2.HealthCheckResponse:
    """The first answer of a new health watch, once the server has freed a slot for it."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await watch(health).read()
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline, exc
            await asyncio.sleep(0.05)


def quota_subject(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            return failure.violations[0].subject
    raise AssertionError("no QuotaFailure detail")


def public_refusals() -> float:
    return (
        metrics.GATEWAY.registry.get_sample_value("auditflow_limit_refusals_total", {"limit": "public_streams"}) or 0.0
    )


@pytest.fixture
def starved(tmp_path: Path) -> Iterator[Pair]:
    """A gateway process limited to `lowfd.LIMIT` file descriptors, with its processor."""
    args = ["--handshake-timeout", "1", "--http-idle-timeout", "1", "--log-level", "INFO"]
    pair = Pair(tmp_path, gateway_args=args, gateway_launcher="tests.support.lowfd", log_level="INFO")
    try:
        pair.start()
        wait_http(f"http://127.0.0.1:{pair.gateway.rest_port}/healthz")
        yield pair
    finally:
        pair.stop()


async def test_a_gateway_short_of_file_descriptors_keeps_serving_its_other_clients(starved: Pair) -> None:
    gateway = starved.gateway
    assert gateway.rest_port is not None
    flood = 2 * lowfd.LIMIT  # more connections than the process may open descriptors
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        await stub.WhoAmI(wpb.WhoAmIRequest(), metadata=auth.bearer("erin"), timeout=10)  # connected before
        sockets = silent(gateway.port, flood) + silent(gateway.rest_port, flood)
        try:
            for _ in range(3):  # the open connection is served while the flood is on
                answer = await stub.WhoAmI(wpb.WhoAmIRequest(), metadata=auth.bearer("erin"), timeout=10)
                assert answer.principal == "erin"
            await wait_closed(sockets)
        finally:
            for s in sockets:
                s.close()
    assert await whoami(gateway.target) == "erin"  # a new client once the silent ones are gone
    async with aiohttp.ClientSession() as http:
        assert await served_again(http, f"http://127.0.0.1:{gateway.rest_port}/healthz")
    assert starved.gateway.proc is not None and starved.gateway.proc.poll() is None
    lines = [line for line in gateway.log_path.read_text().splitlines() if "accept" in line or "refused" in line]
    assert len(lines) <= 10, lines[:20]
    assert RESERVED_FDS < lowfd.LIMIT

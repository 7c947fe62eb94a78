"""A database that stops answering: calls answer UNAVAILABLE (never INTERNAL), the log says so
once (no traceback per call or per loop), and everything works again once it is back. On a
PostgreSQL server of the test's own, stopped and started under a running gateway."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auditflow import db
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway.server import Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from tests.support import auth
from tests.support.grpc_helpers import as_user, step
from tests.support.pgcluster import PrivateCluster, private_cluster

C = grpc.StatusCode


@pytest.fixture
async def running() -> AsyncIterator[tuple[PrivateCluster, Gateway, wpb_grpc.WorkflowServiceAsyncStub]]:
    with private_cluster() as cluster:
        settings = GatewaySettings(**auth.gateway_settings(), database_url=cluster.url(),
                                   processor_target="127.0.0.1:1", plugins=("tests.support.procedures",))  # fmt: skip
        gateway = create_gateway("127.0.0.1:0", settings)
        await gateway.start()
        try:
            async with auth.channel(gateway.address) as channel:
                yield cluster, gateway, wpb_grpc.WorkflowServiceStub(channel)
        finally:
            await gateway.stop(0)


async def code_of(call: object) -> tuple[C, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code(), caught.value.details() or ""


async def test_a_database_outage_answers_unavailable_logs_once_and_recovers(
    running: tuple[PrivateCluster, Gateway, wpb_grpc.WorkflowServiceAsyncStub], caplog: pytest.LogCaptureFixture
) -> None:
    cluster, gateway, stub = running
    create = wpb.CreateWorkflowRequest(title="outage", plan=[step("test_noop")])
    workflow_id = (await stub.CreateWorkflow(create, metadata=as_user("carol"))).workflow.workflow_id
    get = wpb.GetWorkflowRequest(workflow_id=workflow_id)
    caplog.clear()
    caplog.set_level(logging.INFO)

    await asyncio.to_thread(cluster.stop, "immediate")
    calls = [
        lambda: stub.GetWorkflow(get),  # a read
        lambda: stub.ListWorkflows(wpb.ListWorkflowsRequest()),  # a scan
        lambda: stub.Approve(wpb.ApproveRequest(workflow_id=workflow_id), metadata=as_user("alice")),  # a write
        lambda: stub.CreateWorkflow(create, metadata=as_user("carol")),
    ]
    for call in calls:
        for _ in range(3):  # again and again: the log must not grow with the calls
            answer = await code_of(call())
            assert answer == (C.UNAVAILABLE, "the database is unavailable; try again shortly")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == db.__name__]
    assert len(warnings) == 1 and "the database is unreachable" in warnings[0].getMessage(), warnings
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text
    await health_becomes(gateway, health_pb2.HealthCheckResponse.NOT_SERVING)  # (set from the database thread)

    await asyncio.to_thread(cluster.start)
    deadline = time.monotonic() + 30
    while True:  # the pool reconnects on its next use
        try:
            await stub.GetWorkflow(get)
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == C.UNAVAILABLE and time.monotonic() < deadline, exc
            await asyncio.sleep(0.2)
    approved = await stub.Approve(wpb.ApproveRequest(workflow_id=workflow_id), metadata=as_user("alice"))
    assert approved.approved  # nothing was stored by the refused calls: the approval is the first
    assert any("the database answers again" in r.getMessage() for r in caplog.records)
    await health_becomes(gateway, health_pb2.HealthCheckResponse.SERVING)


async def health_becomes(gateway: Gateway, status: int) -> None:
    """Wait until grpc.health.v1 answers `status`, for the server and for its service."""
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        for service in ("", "auditflow.v1.WorkflowService"):
            while (await health.Check(health_pb2.HealthCheckRequest(service=service))).status != status:
                assert time.monotonic() < deadline, f"health of {service!r} never became {status}"
                await asyncio.sleep(0.05)


def test_postgresql_sessions_have_timeouts() -> None:
    engine = db.make_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", writer=True)
    try:
        with engine.connect() as conn:
            for name, milliseconds in db.PG_TIMEOUTS.items():
                shown = conn.exec_driver_sql(f"SHOW {name}").scalar()
                assert shown in (f"{milliseconds}ms", f"{milliseconds // 1000}s", f"{milliseconds // 60000}min"), name
    finally:
        engine.dispose()

"""A database that stops answering: calls answer UNAVAILABLE (never INTERNAL), the log says so
once (no traceback per call or per loop), and everything works again once it is back. On a
PostgreSQL server of the test's own, stopped and started under a running gateway, and under a
running processor. And a row held by a stalled process: only the call that needs it waits
(off the writer) and answers UNAVAILABLE; the other runs go on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text

from auditflow import db
from auditflow.convert import utcnow
from auditflow.v1 import processor_service_pb2 as ps
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway.server import Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from processor import store, transitions
from tests.support import auth
from tests.support.grpc_helpers import as_user, step
from tests.support.pgcluster import PrivateCluster, private_cluster
from tests.support.postgres import fresh_database
from tests.support.processor_harness import (
    Harness,
    Harnesses,
    assert_gap_free,
    collect,
    enqueue_request,
    new_id,
    read_until,
    types,
    watch,
)
from tests.support.processor_harness import step as run_step

C = grpc.StatusCode
GATEWAY, PROCESSOR = "auditflow.v1.WorkflowService", "auditflow.v1.ProcessorService"


@pytest.fixture
async def harnesses(tmp_path: Path) -> AsyncIterator[Harnesses]:
    factory = Harnesses(tmp_path)
    yield factory
    await factory.close()


@pytest.fixture
async def running() -> AsyncIterator[tuple[PrivateCluster, Gateway, wpb_grpc.WorkflowServiceAsyncStub]]:
    with private_cluster() as cluster:
        settings = GatewaySettings(
            **auth.gateway_settings(),
            database_url=cluster.url(),
            rest_port=0,
            processor_target="127.0.0.1:1",
            plugins=("tests.support.procedures",),
        )
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
    created = (await stub.CreateWorkflow(create, metadata=as_user("carol"))).workflow
    workflow_id = created.workflow_id
    approve = wpb.ApproveRequest(workflow_id=workflow_id, etag=created.etag)
    get = wpb.GetWorkflowRequest(workflow_id=workflow_id)
    caplog.clear()
    caplog.set_level(logging.INFO)

    await asyncio.to_thread(cluster.stop, "immediate")
    calls = [
        lambda: stub.GetWorkflow(get),  # a read
        lambda: stub.ListWorkflows(wpb.ListWorkflowsRequest()),  # a scan
        lambda: stub.Approve(approve, metadata=as_user("alice")),  # a write
        lambda: stub.CreateWorkflow(create, metadata=as_user("carol")),
    ]
    for call in calls:
        for _ in range(3):  # again and again: the log must not grow with the calls
            answer = await code_of(call())
            assert answer == (C.UNAVAILABLE, "the database is unavailable; try again shortly")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == db.__name__]
    assert len(warnings) == 1 and "the database is unreachable" in warnings[0].getMessage(), warnings
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text
    await health_becomes(
        gateway.address, GATEWAY, health_pb2.HealthCheckResponse.NOT_SERVING
    )  # (set from the database thread)

    await asyncio.to_thread(cluster.start)
    deadline = time.monotonic() + 30
    while True:  # the pool reconnects on its next use
        try:
            await stub.GetWorkflow(get)
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == C.UNAVAILABLE and time.monotonic() < deadline, exc
            await asyncio.sleep(0.2)
    approved = await stub.Approve(approve, metadata=as_user("alice"))
    assert approved.approved  # nothing was stored by the refused calls: the approval is the first
    listed = await stub.ListWorkflows(wpb.ListWorkflowsRequest())  # (a page worker's own connection too)
    assert [w.workflow_id for w in listed.workflows] == [workflow_id]
    assert any("the database answers again" in r.getMessage() for r in caplog.records)
    await health_becomes(gateway.address, GATEWAY, health_pb2.HealthCheckResponse.SERVING)
    assert (await readyz(gateway))[0] == 200


async def readyz(gateway: Gateway) -> tuple[int, Any]:
    assert gateway.rest is not None
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.rest.url}/readyz") as response:
        return response.status, await response.json()


async def health_becomes(address: str, name: str, status: int) -> None:
    """Wait until grpc.health.v1 answers `status`, for the server and for its service `name`."""
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        for service in ("", name):
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


async def test_a_processor_answers_unavailable_during_an_outage_and_resumes_its_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with private_cluster() as cluster:
        harnesses = Harnesses(tmp_path)  # (stopped before the cluster is)
        try:
            await _processor_outage(cluster, await harnesses.start(database_url=cluster.url(), cycle_delay=0.2), caplog)
        finally:
            await harnesses.close()


async def _processor_outage(cluster: PrivateCluster, h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    running = enqueue_request([run_step("test_sleep", seconds=0.05)] * 8)
    await h.stub.Enqueue(running)
    caplog.clear()
    caplog.set_level(logging.INFO)

    await asyncio.to_thread(cluster.stop, "immediate")
    for _ in range(3):  # again and again: the log must not grow with the calls
        for call in (
            h.stub.Enqueue(enqueue_request([run_step("test_noop")])),
            h.stub.GetRun(ps.GetRunRequest(workflow_id=running.workflow_id)),
        ):
            assert await code_of(call) == (C.UNAVAILABLE, "the database is unavailable; try again shortly")
    await health_becomes(h.processor.address, PROCESSOR, health_pb2.HealthCheckResponse.NOT_SERVING)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == db.__name__]
    assert len(warnings) == 1 and "the database is unreachable" in warnings[0].getMessage(), warnings

    await asyncio.to_thread(cluster.start)
    await health_becomes(h.processor.address, PROCESSOR, health_pb2.HealthCheckResponse.SERVING)
    messages = await collect(h.stub, running.workflow_id, timeout=60)  # the run goes on to its end
    assert types(messages)[-1] == "COMPLETED"
    assert_gap_free(messages, first=running.base_sequence + 1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or (r.exc_info and r.name == db.__name__)]


async def test_a_cancel_of_a_run_locked_by_a_stalled_processor_never_holds_up_the_other_runs(tmp_path: Path) -> None:
    """A processor frozen inside a transaction holds its run's row: a CancelRun of that run
    sent to another processor waits for the lock off that processor's single writer and
    answers UNAVAILABLE after lock_timeout, while that processor's own runs go on."""
    with fresh_database("stalled") as url:
        harnesses = Harnesses(tmp_path)  # (stopped before the database is dropped)
        try:
            await _cancel_while_locked(url, await harnesses.start(database_url=url, cycle_delay=0.01))
        finally:
            await harnesses.close()


async def _cancel_while_locked(url: str, h: Harness) -> None:
    stalled = _leased_elsewhere(url)
    mine = enqueue_request([run_step("test_sleep", seconds=0.1)] * 100, max_cycles=200)
    await h.stub.Enqueue(mine)
    engine = create_engine(url)
    try:
        with engine.connect() as conn, conn.begin():  # the stalled processor's open transaction
            conn.execute(text("SELECT 1 FROM runs WHERE workflow_id = :id FOR UPDATE"), {"id": stalled})
            stream = watch(h.stub, mine.workflow_id)
            await read_until(stream, lambda m: m.HasField("event") and m.event.cycle >= 1)
            cancel = asyncio.ensure_future(
                h.stub.CancelRun(ps.CancelRunRequest(workflow_id=stalled, requested_by="alice"))
            )
            await asyncio.sleep(0)  # (sent)
            at = (await h.stub.GetRun(ps.GetRunRequest(workflow_id=mine.workflow_id))).run.snapshot.cycle
            # While the cancel waits for the lock, this processor's run goes on cycle after cycle.
            await read_until(stream, lambda m: m.HasField("event") and m.event.cycle >= at + 5)
            assert not cancel.done(), "the cancel answered before the lock's timeout"
            code, details = await code_of(cancel)
            assert code == C.UNAVAILABLE and "locked by another transaction" in details, details
            stream.cancel()
        # The lock is gone (the stalled transaction ended): the cancel goes through.
        answer = await h.stub.CancelRun(ps.CancelRunRequest(workflow_id=stalled, requested_by="alice"))
        assert answer.run.cancel_requested
    finally:
        engine.dispose()


def _leased_elsewhere(url: str) -> str:
    """A RUNNING run whose lease another processor holds for an hour."""
    engine = create_engine(url)
    workflow_id, now = new_id(), utcnow()
    try:
        with engine.begin() as conn:
            store.insert_run(
                conn,
                workflow_id=workflow_id,
                title="stalled",
                plan=[{"procedure": "test_noop", "parameters": {}}],
                orchestrator="plan",
                max_cycles=5,
                base_sequence=0,
                base_hash=None,
                queued_message="queued",
                now=now,
            )
            (run,) = store.claim(conn, owner="stalled", now=now, expires_at=now + timedelta(hours=1), limit=1)
            store.append(conn, run, *transitions.started(run, "stalled"), now)
    finally:
        engine.dispose()
    return workflow_id

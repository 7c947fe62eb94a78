"""Gateway and processor in-process on real ports: the whole path of a workflow, watched.

Every test runs twice: on SQLite files (the embedded default) and on PostgreSQL (one fresh
database per service, as when scaled out)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway.server import Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from processor.server import Processor
from processor.server import create_server as create_processor
from processor.settings import Settings as ProcessorSettings
from tests.support import auth
from tests.support.grpc_helpers import as_user, read_and_approve, step
from tests.support.postgres import fresh_database

S = pb.WorkflowStatus
PLUGINS = ("tests.support.procedures",)
E = pb.EventType


@dataclass
class Pair:
    gateway: Gateway
    processor: Processor
    stub: wpb_grpc.WorkflowServiceAsyncStub


@pytest.fixture
async def pair(database_urls: tuple[str, str]) -> AsyncIterator[Pair]:
    gateway_url, processor_url = database_urls
    processor = create_processor(
        "127.0.0.1:0",
        ProcessorSettings(
            **auth.processor_settings(),
            database_url=processor_url,
            plugins=("tests.support.procedures",),
            cycle_delay=0.02,
            poll_interval=0.05,
            heartbeat_interval=0.5,
        ),
    )
    await processor.start()
    gateway = create_gateway(
        "127.0.0.1:0",
        GatewaySettings(
            **auth.gateway_settings(),
            database_url=gateway_url,
            processor_target=processor.address,
            plugins=("tests.support.procedures",),
            heartbeat_interval=0.5,
        ),
    )
    await gateway.start()
    async with auth.channel(gateway.address) as channel:
        yield Pair(gateway, processor, wpb_grpc.WorkflowServiceStub(channel))
    await gateway.stop(0)
    await processor.stop(1)


async def submit(stub: wpb_grpc.WorkflowServiceAsyncStub, plan: list[pb.PlanStep], max_cycles: int = 0) -> str:
    request = wpb.CreateWorkflowRequest(title="t", plan=plan, max_cycles=max_cycles)
    return (await stub.CreateWorkflow(request, metadata=as_user("carol"))).workflow.workflow_id


async def approve(stub: wpb_grpc.WorkflowServiceAsyncStub, workflow_id: str) -> None:
    await read_and_approve(stub, workflow_id, as_user("alice"))


async def watch(
    stub: wpb_grpc.WorkflowServiceAsyncStub, workflow_id: str, after: int = 0, stop_at: int | None = None
) -> list[wpb.WatchStatusResponse]:
    """Events (not heartbeats) of one stream, to its end or to sequence `stop_at`."""
    received = []
    call = stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id, after_sequence=after))
    async for message in call:
        if message.HasField("event"):
            received.append(message)
            if stop_at is not None and message.event.sequence >= stop_at:
                call.cancel()
                break
    return received


def sequences(messages: list[wpb.WatchStatusResponse]) -> list[int]:
    return [m.event.sequence for m in messages]


async def test_a_workflow_runs_to_completion_and_get_shows_the_result(pair: Pair) -> None:
    workflow_id = await submit(pair.stub, [step("test_noop"), step("test_noop"), step("test_noop")])
    await approve(pair.stub, workflow_id)
    events = await watch(pair.stub, workflow_id)
    types = [m.event.type for m in events]
    assert types[:4] == [E.EVENT_TYPE_CREATED, E.EVENT_TYPE_APPROVED, E.EVENT_TYPE_QUEUED, E.EVENT_TYPE_STARTED]
    assert types[-1] == E.EVENT_TYPE_COMPLETED
    assert sequences(events) == list(range(1, len(events) + 1))
    assert [m.event.cycle for m in events if m.event.type == E.EVENT_TYPE_CYCLE_COMPLETED] == [1, 2, 3]
    last = events[-1].snapshot
    assert last.is_completed and not last.is_processing and (last.progress.done, last.progress.total) == (3, 3)
    # The gateway copies the terminal snapshot before it sends the event: Get agrees at once.
    workflow = (await pair.stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=workflow_id))).workflow
    assert workflow.status == S.WORKFLOW_STATUS_COMPLETED
    assert workflow.last_sequence == events[-1].event.sequence
    assert len(workflow.result["steps"]) == 3
    status = (await pair.stub.GetStatus(wpb.GetStatusRequest(workflow_id=workflow_id))).status
    assert status.is_completed and status.progress.done == 3


async def test_a_hundred_watchers_see_identical_complete_sequences(pair: Pair) -> None:
    workflow_id = await submit(pair.stub, [step("test_sleep", seconds=0.05) for _ in range(4)])
    watchers = [asyncio.create_task(watch(pair.stub, workflow_id)) for _ in range(100)]
    await asyncio.sleep(0.3)  # every stream is open and has seen CREATED
    await approve(pair.stub, workflow_id)
    results = await asyncio.gather(*watchers)
    reference = results[0]
    assert sequences(reference) == list(range(1, len(reference) + 1))
    assert reference[-1].event.type == E.EVENT_TYPE_COMPLETED
    for result in results[1:]:
        assert [(m.event, m.snapshot) for m in result] == [(m.event, m.snapshot) for m in reference]


async def test_a_watcher_that_resumes_mid_run_gets_exactly_what_it_missed(pair: Pair) -> None:
    workflow_id = await submit(pair.stub, [step("test_sleep", seconds=0.1) for _ in range(5)])
    await approve(pair.stub, workflow_id)
    first = await watch(pair.stub, workflow_id, stop_at=6)  # ... STARTED, cycle 1, cycle 2
    assert sequences(first) == [1, 2, 3, 4, 5, 6]
    assert not first[-1].snapshot.is_completed  # really mid-run
    rest = await watch(pair.stub, workflow_id, after=6)
    full = await watch(pair.stub, workflow_id)
    assert sequences(first) + sequences(rest) == sequences(full)
    assert [m.event for m in first + rest] == [m.event for m in full]


async def test_cancel_of_a_running_workflow_takes_effect_between_cycles(pair: Pair) -> None:
    workflow_id = await submit(pair.stub, [step("test_sleep", seconds=0.1) for _ in range(20)], max_cycles=30)
    await approve(pair.stub, workflow_id)
    await watch(pair.stub, workflow_id, stop_at=5)  # the first cycle is done
    answer = await pair.stub.CancelWorkflow(
        wpb.CancelWorkflowRequest(workflow_id=workflow_id, reason="wrong ledger"), metadata=as_user("carol")
    )
    assert answer.pending
    events = await watch(pair.stub, workflow_id)
    assert E.EVENT_TYPE_CANCEL_REQUESTED in [m.event.type for m in events]
    assert events[-1].event.type == E.EVENT_TYPE_CANCELLED
    assert events[-1].snapshot.progress.done < 20
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.stub.CancelWorkflow(wpb.CancelWorkflowRequest(workflow_id=workflow_id), metadata=as_user("carol"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_critical_error_fails_the_run_with_its_reason(pair: Pair) -> None:
    workflow_id = await submit(pair.stub, [step("test_noop"), step("test_critical", message="ledger is corrupt")])
    await approve(pair.stub, workflow_id)
    events = await watch(pair.stub, workflow_id)
    final = events[-1]
    assert final.event.type == E.EVENT_TYPE_FAILED
    assert final.snapshot.error.reason == "CRITICAL_ERROR"
    assert "ledger is corrupt" in final.snapshot.error.message
    workflow = (await pair.stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=workflow_id))).workflow
    assert (workflow.status, workflow.error.reason) == (S.WORKFLOW_STATUS_FAILED, "CRITICAL_ERROR")


async def test_a_cycle_error_is_a_warning_and_the_run_goes_on(pair: Pair, tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    workflow_id = await submit(pair.stub, [step("test_fail", path=str(counter), failures=1), step("test_noop")])
    await approve(pair.stub, workflow_id)
    events = await watch(pair.stub, workflow_id)
    types = [m.event.type for m in events]
    assert E.EVENT_TYPE_CYCLE_FAILED in types
    assert types[-1] == E.EVENT_TYPE_COMPLETED


async def test_a_run_that_needs_more_cycles_than_allowed_fails(pair: Pair) -> None:
    workflow_id = await submit(pair.stub, [step("test_noop") for _ in range(3)], max_cycles=2)
    await approve(pair.stub, workflow_id)
    events = await watch(pair.stub, workflow_id)
    assert events[-1].event.type == E.EVENT_TYPE_FAILED
    assert events[-1].snapshot.error.reason == "MAX_CYCLES_EXCEEDED"
    assert [m.event.cycle for m in events if m.event.type == E.EVENT_TYPE_CYCLE_COMPLETED] == [1, 2]


async def test_two_gateway_replicas_on_one_postgresql_database_decide_once(tmp_path: Path) -> None:
    """Scaled out: the compare-and-set holds across processes' connections, not just within
    one writer thread."""
    with fresh_database("gateway") as url:
        replicas = [
            create_gateway(
                "127.0.0.1:0",
                GatewaySettings(
                    **auth.gateway_settings(), database_url=url, processor_target="127.0.0.1:1", plugins=PLUGINS
                ),
            )
            for _ in range(2)
        ]
        for replica in replicas:
            await replica.start()
        try:
            channels = [auth.channel(r.address) for r in replicas]
            stubs = [wpb_grpc.WorkflowServiceStub(c) for c in channels]
            request = wpb.CreateWorkflowRequest(title="t", plan=[step("test_noop")])
            created = (await stubs[0].CreateWorkflow(request, metadata=as_user("carol"))).workflow
            workflow_id, etag = created.workflow_id, created.etag

            async def decide(i: int) -> bool:
                stub = stubs[i % 2]
                metadata = as_user(f"user{i}")
                try:
                    if i % 3:
                        await stub.Approve(wpb.ApproveRequest(workflow_id=workflow_id, etag=etag), metadata=metadata)
                    else:
                        reject = wpb.RejectRequest(workflow_id=workflow_id, etag=etag, comment="no")
                        await stub.Reject(reject, metadata=metadata)
                    return True
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
                    return False

            outcomes = await asyncio.gather(*(decide(i) for i in range(20)))
            assert outcomes.count(True) == 1
            seen = [(await s.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=workflow_id))).workflow for s in stubs]
            # The stored state is one; last_message may differ: an approved run waiting for the
            # (unreachable) processor says since when, as each replica saw it.
            for workflow in seen:
                workflow.ClearField("last_message")
            assert seen[0].last_sequence == 2 and seen[0] == seen[1]
            for channel in channels:
                await channel.close()
        finally:
            for replica in replicas:
                await replica.stop(0)


async def test_a_watcher_on_one_replica_gets_what_another_replica_committed(tmp_path: Path) -> None:
    """Events only a gateway makes (one of two approvals, a request for changes, a revision, a
    rejection), committed through replica A, reach a watcher on replica B in order, and the
    stream ends with the rejection: B's hub never saw them published (no processor event
    follows them), so B finds the row ahead of it and fills its log from the database."""
    with fresh_database("crosscheck") as url:
        replicas = [
            create_gateway(
                "127.0.0.1:0",
                GatewaySettings(
                    **auth.gateway_settings(),
                    database_url=url,
                    processor_target="127.0.0.1:1",
                    plugins=PLUGINS,
                    heartbeat_interval=0.3,
                    replica_poll_interval=0.2,
                ),
            )
            for _ in range(2)
        ]
        for replica in replicas:
            await replica.start()
        try:
            async with auth.channel(replicas[0].address) as a_channel, auth.channel(replicas[1].address) as b_channel:
                a, b = wpb_grpc.WorkflowServiceStub(a_channel), wpb_grpc.WorkflowServiceStub(b_channel)
                create = wpb.CreateWorkflowRequest(title="t", plan=[step("test_noop")], required_approvals=2)
                workflow = (await b.CreateWorkflow(create, metadata=as_user("carol"))).workflow
                call = b.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow.workflow_id), metadata=as_user("dave"))
                seen: list[wpb.WatchStatusResponse] = []

                async def until(sequence: int) -> None:
                    async for message in call:
                        if message.HasField("event"):
                            seen.append(message)
                            if message.event.sequence == sequence:
                                return

                await asyncio.wait_for(until(1), 30)
                approve = wpb.ApproveRequest(workflow_id=workflow.workflow_id, etag=workflow.etag)
                workflow = (await a.Approve(approve, metadata=as_user("alice"))).workflow
                ask = wpb.RequestChangesRequest(workflow_id=workflow.workflow_id, etag=workflow.etag, reason="March")
                workflow = (await a.RequestChanges(ask, metadata=as_user("bob"))).workflow
                revise = wpb.ReviseWorkflowRequest(workflow_id=workflow.workflow_id, etag=workflow.etag, title="March")
                workflow = (await a.ReviseWorkflow(revise, metadata=as_user("carol"))).workflow
                # B's watcher sees the first three before the last is committed.
                await asyncio.wait_for(until(workflow.last_sequence), 30)
                assert seen[-1].snapshot.status == S.WORKFLOW_STATUS_AWAITING_APPROVAL
                reject = wpb.RejectRequest(workflow_id=workflow.workflow_id, etag=workflow.etag, comment="no")
                await a.Reject(reject, metadata=as_user("alice"))
                rest = [m async for m in call if m.HasField("event")]  # the stream ends
                assert await call.code() == grpc.StatusCode.OK
                events = [m.event for m in [*seen, *rest]]
                assert [e.sequence for e in events] == [1, 2, 3, 4, 5]
                assert [e.type for e in events] == [
                    E.EVENT_TYPE_CREATED,
                    E.EVENT_TYPE_APPROVAL_RECORDED,
                    E.EVENT_TYPE_CHANGES_REQUESTED,
                    E.EVENT_TYPE_REVISED,
                    E.EVENT_TYPE_REJECTED,
                ]
                assert rest[-1].snapshot.status == S.WORKFLOW_STATUS_REJECTED
        finally:
            for replica in replicas:
                await replica.stop(0)

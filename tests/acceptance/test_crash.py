"""Processes die with SIGKILL; nothing acknowledged is lost."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway.server import LINK_NAME
from tests.support.cluster import Pair
from tests.support.grpc_helpers import as_user, assert_trail_intact, dump_sqlite, read_and_approve_sync, step
from tests.support.processes import alive, children

S = pb.WorkflowStatus


@pytest.fixture
def stub(pair: Pair) -> Iterator[wpb_grpc.WorkflowServiceStub]:
    with grpc.insecure_channel(pair.gateway.target) as channel:
        yield wpb_grpc.WorkflowServiceStub(channel)


def submit(stub: wpb_grpc.WorkflowServiceStub, steps: int, seconds: float) -> str:
    plan = [step("test_sleep", seconds=seconds) for _ in range(steps)]
    request = wpb.CreateWorkflowRequest(title="crash test", plan=plan, max_cycles=50)
    return stub.CreateWorkflow(request, metadata=as_user("carol")).workflow.workflow_id


HEALTH = health_pb2.HealthCheckResponse


def approve(stub: wpb_grpc.WorkflowServiceStub, workflow_id: str) -> wpb.ApproveResponse:
    return read_and_approve_sync(stub, workflow_id, as_user("alice"), timeout=5)


def wait_until(predicate, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def link_status(pair: Pair) -> int:
    """The gateway's health for its link to the processor (`grpc.health.v1`)."""
    with grpc.insecure_channel(pair.gateway.target) as channel:
        request = health_pb2.HealthCheckRequest(service=LINK_NAME)
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)


def status(stub: wpb_grpc.WorkflowServiceStub, workflow_id: str) -> pb.Workflow:
    return stub.GetWorkflow(
        wpb.GetWorkflowRequest(workflow_id=workflow_id), metadata=as_user("observer"), timeout=5
    ).workflow


def all_events(stub: wpb_grpc.WorkflowServiceStub, workflow_id: str) -> list[pb.WorkflowEvent]:
    stream = stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=as_user("observer"), timeout=60)
    return [m.event for m in stream if m.HasField("event")]


def test_a_processor_killed_mid_run_resumes_every_run_from_its_checkpoint(
    pair: Pair, stub: wpb_grpc.WorkflowServiceStub
) -> None:
    ids = [submit(stub, steps=8, seconds=0.15) for _ in range(4)]
    for workflow_id in ids:
        approve(stub, workflow_id)
    wait_until(lambda: any(status(stub, w).cycle >= 2 for w in ids), what="a run past its second cycle")
    pair.processor.kill()
    pair.processor.start()
    wait_until(lambda: all(status(stub, w).is_completed for w in ids), what="every run to end")
    resumed = 0
    for workflow_id in ids:
        workflow = status(stub, workflow_id)
        assert workflow.status == S.WORKFLOW_STATUS_COMPLETED, workflow
        events = all_events(stub, workflow_id)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        cycles = [e.cycle for e in events if e.type == pb.EVENT_TYPE_CYCLE_COMPLETED]
        assert cycles == list(range(1, 9)), cycles  # no cycle skipped, none counted twice
        resumed += sum(1 for e in events if e.type == pb.EVENT_TYPE_STARTED and "resumed" in e.message)
        assert_trail_intact(stub, workflow_id, events)
    assert resumed >= 1  # at least one run was really interrupted and resumed


def test_an_approval_answered_before_the_gateway_is_killed_is_delivered(
    pair: Pair, stub: wpb_grpc.WorkflowServiceStub
) -> None:
    pair.processor.stop()  # so that the approval cannot be delivered before the kill
    workflow_id = submit(stub, steps=2, seconds=0.01)
    answer = approve(stub, workflow_id)
    assert answer.approved
    pair.gateway.kill()
    outbox = dump_sqlite(pair.gateway.database)["outbox"]
    assert [row[1] for row in outbox] == [workflow_id]
    pair.gateway.start()
    assert status(stub, workflow_id).status == S.WORKFLOW_STATUS_APPROVED
    pair.processor.start()
    wait_until(lambda: status(stub, workflow_id).is_completed, what="the run to end")
    assert status(stub, workflow_id).status == S.WORKFLOW_STATUS_COMPLETED
    assert dump_sqlite(pair.gateway.database)["outbox"] == []
    assert_trail_intact(stub, workflow_id, all_events(stub, workflow_id))  # one chain across the kill


def test_a_killed_gateways_page_workers_exit_and_the_restarted_one_lists_with_new_ones(
    pair: Pair, stub: wpb_grpc.WorkflowServiceStub
) -> None:
    workflow_id = submit(stub, steps=1, seconds=0.01)
    assert [
        w.workflow_id for w in stub.ListWorkflows(wpb.ListWorkflowsRequest(), metadata=as_user("carol")).workflows
    ] == [workflow_id]
    gateway = pair.gateway.pid
    workers = children(gateway)
    assert workers, "a page worker process serves the list"
    pair.gateway.kill()
    wait_until(lambda: not any(alive(pid) for pid in workers), timeout=30, what="the orphaned page workers to exit")
    pair.gateway.start()
    listed = stub.ListWorkflows(wpb.ListWorkflowsRequest(), metadata=as_user("carol"))
    assert [w.workflow_id for w in listed.workflows] == [workflow_id]
    assert children(pair.gateway.pid) and not set(children(pair.gateway.pid)) & set(workers)


def test_approve_with_the_processor_down_answers_and_runs_once_it_is_up(
    pair: Pair, stub: wpb_grpc.WorkflowServiceStub
) -> None:
    pair.processor.stop()
    wait_until(lambda: link_status(pair) == HEALTH.NOT_SERVING, what="the gateway to see its processor gone")
    workflow_id = submit(stub, steps=1, seconds=0.01)
    answer = approve(stub, workflow_id)  # (answered with the processor still down)
    assert answer.approved and not answer.background_processing_started  # queued, and it says so
    assert "queued until a processor is back" in answer.processing_message
    assert link_status(pair) == HEALTH.NOT_SERVING
    assert status(stub, workflow_id).status == S.WORKFLOW_STATUS_APPROVED  # it waits, approved
    pair.processor.start()
    events = all_events(stub, workflow_id)
    assert [e.type for e in events][:3] == [pb.EVENT_TYPE_CREATED, pb.EVENT_TYPE_APPROVED, pb.EVENT_TYPE_QUEUED]
    assert events[-1].type == pb.EVENT_TYPE_COMPLETED
    assert_trail_intact(stub, workflow_id, events)

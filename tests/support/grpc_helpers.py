"""Helpers for tests that talk to real servers: stubs, metadata, rich error details, dumps."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from auditflow import trail
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from tests.support import auth


def as_user(name: str, roles: tuple[str, ...] = auth.DEFAULT_ROLES) -> tuple[tuple[str, str]]:
    """Metadata authenticating as `name` (a JWT of the test identity provider)."""
    return auth.bearer(name, roles)


async def read_and_approve(stub: Any, workflow_id: str, metadata: Any, **fields: Any) -> wpb.ApproveResponse:
    """Approve as an approver does: read the workflow, then approve the revision read (its etag)."""
    read = await stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=workflow_id), metadata=metadata)
    request = wpb.ApproveRequest(workflow_id=workflow_id, etag=read.workflow.etag, **fields)
    response: wpb.ApproveResponse = await stub.Approve(request, metadata=metadata)
    return response


def read_and_approve_sync(stub: Any, workflow_id: str, metadata: Any, **call: Any) -> wpb.ApproveResponse:
    """`read_and_approve` with a blocking stub (`call`: e.g. a timeout for both calls)."""
    read = stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=workflow_id), metadata=metadata, **call)
    request = wpb.ApproveRequest(workflow_id=workflow_id, etag=read.workflow.etag)
    response: wpb.ApproveResponse = stub.Approve(request, metadata=metadata, **call)
    return response


def ledger_step(path: str | Path) -> pb.PlanStep:
    step = pb.PlanStep(procedure="ledger_summary")
    step.parameters.update({"path": str(path)})
    return step


def step(procedure: str, **parameters: Any) -> pb.PlanStep:
    s = pb.PlanStep(procedure=procedure)
    s.parameters.update(parameters)
    return s


def details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """ErrorInfo reason and BadRequest fields of a rich error."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    found: dict[str, Any] = {"reason": None, "fields": []}
    if status is None:
        return found
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            found["reason"] = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found["fields"] = [v.field for v in bad.field_violations]
    return found


def dump_sqlite(path: str | Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to show that a refused request changed nothing."""
    conn = sqlite3.connect(str(path))
    try:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table' order by name")]
        return {t: sorted(conn.execute(f"select * from {t}").fetchall(), key=repr) for t in tables}
    finally:
        conn.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_trail_intact(stub: Any, workflow_id: str, events: list[pb.WorkflowEvent]) -> None:
    """VerifyTrail finds the workflow's trail intact, and the events a watcher received
    recompute to the same head (a run interrupted and resumed links on as if it was not)."""
    verified = stub.VerifyTrail(wpb.VerifyTrailRequest(workflow_id=workflow_id), metadata=as_user("observer"))
    assert verified.intact, verified
    assert verified.events_checked == len(events) and verified.head_sequence == events[-1].sequence, verified
    local = trail.check(events)
    assert local.problem is None and local.head_hash == verified.head_hash == events[-1].hash, local
    if events[-1].type == pb.EVENT_TYPE_COMPLETED:
        assert events[-1].result_digest and verified.head_hash, events[-1]


def get_workflow(stub: Any, workflow_id: str, timeout: float = 30) -> pb.Workflow:
    """The workflow as an observer sees it."""
    request = wpb.GetWorkflowRequest(workflow_id=workflow_id)
    workflow: pb.Workflow = stub.GetWorkflow(request, metadata=as_user("observer"), timeout=timeout).workflow
    return workflow


def watched_events(stub: Any, workflow_id: str, timeout: float = 60) -> list[pb.WorkflowEvent]:
    """Every event of a finished workflow, as WatchStatus replays them."""
    request = wpb.WatchStatusRequest(workflow_id=workflow_id)
    return [
        m.event for m in stub.WatchStatus(request, metadata=as_user("observer"), timeout=timeout) if m.HasField("event")
    ]

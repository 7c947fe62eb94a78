"""Helpers for tests that talk to real servers: stubs, metadata, rich error details, dumps."""

from __future__ import annotations

import random
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


# Ports a test's servers listen on, when the kernel's ephemeral range cannot be read: below
# Linux's default range (32768-60999) and above the ports of well-known services.
_FALLBACK_PORTS = (20000, 32768)


def free_port() -> int:
    """A port nothing listens on, for a server a test starts later (and may restart on it).

    Chosen at random below the kernel's ephemeral range, not by binding port 0: a port from
    that range is where every outgoing connection on the machine takes its local port, so
    between the choice and the server's start (seconds, where several servers start one after
    another), or between a kill and a restart, another suite's client could take it and the
    server would not start ("the port is in use"). Below the range, only another test's
    random choice can meet it."""
    import socket

    low, high = _port_range()
    for _ in range(100):
        port = _random.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("", port))  # (every address: as a server bound to any of them would)
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port found between {low} and {high}")


def _port_range() -> tuple[int, int]:
    """Ports below the ephemeral range, at least 5,000 of them; else the fallback's."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_PORTS
    low = 10000
    return (low, ephemeral_low) if ephemeral_low - low >= 5000 else _FALLBACK_PORTS


_random = random.SystemRandom()  # (not the module's generator: a test that seeds it would have
# two suites on one machine choose the same ports)


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

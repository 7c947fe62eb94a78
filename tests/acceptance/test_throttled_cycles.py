"""A slow machine takes longer, never more cycles: a real processor, throttled to a fifth of a
core by SIGSTOP/SIGCONT duty cycling, finishes a seven-step audit within a max_cycles that
leaves one cycle per step and two to spare, with the short time budget of a cycle used up
after a chunk or two. Each cycle does at least its share of the step's chunks left."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from auditflow import synthetic
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from tests.acceptance.test_audit_crash import plan
from tests.support.cluster import Pair
from tests.support.grpc_helpers import as_user, get_workflow, step, watched_events

pytestmark = pytest.mark.acceptance

S = pb.WorkflowStatus
ROWS = 40_000
CHUNK_ROWS = 2_000  # about 20 chunks a step
MAX_CYCLES = 9  # seven steps, two cycles to spare


def throttle(pid: int, stop: threading.Event, counted: list[int]) -> None:
    """Keep the process stopped 80 % of the time until `stop` (then leave it running)."""
    try:
        while not stop.is_set():
            os.kill(pid, signal.SIGSTOP)
            stop.wait(0.04)
            os.kill(pid, signal.SIGCONT)
            counted[0] += 1
            stop.wait(0.01)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_throttled_processor_finishes_within_max_cycles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITFLOW_CYCLE_BUDGET", "0.05")  # a cycle's time is up after a chunk or two
    path = tmp_path / "ledger.csv"
    assert synthetic.main(["--rows", str(ROWS), "--seed", "5", "--out", str(path)]) == 0
    steps = plan(path, json.loads(path.with_suffix(".truth.json").read_text()))
    for _, parameters in steps:
        parameters["chunk_rows"] = CHUNK_ROWS
    pair = Pair(
        tmp_path / "servers",
        processor_args=["--cycle-delay", "0", "--lease-seconds", "5", "--poll-interval", "0.2"],
        gateway_args=["--heartbeat-interval", "1"],
    )
    (tmp_path / "servers").mkdir()
    pair.start()
    stop, counted = threading.Event(), [0]
    throttler = threading.Thread(target=throttle, args=(pair.processor.pid, stop, counted), daemon=True)
    try:
        with grpc.insecure_channel(pair.gateway.target) as channel:
            stub = wpb_grpc.WorkflowServiceStub(channel)
            request = wpb.CreateWorkflowRequest(
                title="throttled audit",
                plan=[step(name, **parameters) for name, parameters in steps],
                max_cycles=MAX_CYCLES,
            )
            created = stub.CreateWorkflow(request, metadata=as_user("carol")).workflow
            workflow_id = created.workflow_id
            throttler.start()
            approve = wpb.ApproveRequest(workflow_id=workflow_id, etag=created.etag)
            stub.Approve(approve, metadata=as_user("alice"), timeout=30)

            deadline = time.monotonic() + 240
            while not get_workflow(stub, workflow_id).is_completed:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            final = get_workflow(stub, workflow_id)
            stop.set()
            throttler.join()
            events = watched_events(stub, workflow_id)
    finally:
        stop.set()
        if throttler.is_alive():
            throttler.join()
        pair.stop()
    assert counted[0] > 20  # the processor really ran throttled
    assert final.status == S.WORKFLOW_STATUS_COMPLETED, (final, pair.processor.log())
    assert final.cycle <= MAX_CYCLES
    cycles = [e.message for e in events if e.type == pb.EVENT_TYPE_CYCLE_COMPLETED]
    assert len(cycles) <= MAX_CYCLES and any(": chunk " in m for m in cycles), cycles  # cut by the time budget

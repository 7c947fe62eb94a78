"""A processor killed (SIGKILL) in the middle of a chunked audit plan resumes from its last
checkpoint, and the run's findings are those of an uninterrupted run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from auditflow import synthetic
from auditflow.procedures import load
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from tests.support.cluster import Pair
from tests.support.grpc_helpers import as_user, assert_trail_intact, get_workflow, step, watched_events

S = pb.WorkflowStatus
ROWS = 12_000
CHUNK_ROWS = 1_500  # about 8 chunks a step


@pytest.fixture(autouse=True)
def one_chunk_per_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set before the `pair` fixture (conftest) starts the servers: many checkpoints."""
    monkeypatch.setenv("AUDITFLOW_CYCLE_BUDGET", "0")


def plan(path: Path, truth: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    common = {"path": str(path), "chunk_rows": CHUNK_ROWS}
    names = ("duplicate_payments", "benford_first_digit", "round_amounts", "weekend_postings")
    steps = [(name, dict(common)) for name in names]
    steps[3][1]["holidays"] = truth["holidays"]
    steps += [(name, dict(common)) for name in ("split_purchases", "segregation_of_duties", "outliers")]
    return steps


def test_an_audit_killed_mid_plan_resumes_with_the_same_findings(tmp_path: Path, pair: Pair) -> None:
    path = tmp_path / "ledger.csv"
    assert synthetic.main(["--rows", str(ROWS), "--seed", "5", "--out", str(path)]) == 0
    steps = plan(path, json.loads(path.with_suffix(".truth.json").read_text()))
    expected = [load().get(name).run(parameters) for name, parameters in steps]  # type: ignore[union-attr]

    with grpc.insecure_channel(pair.gateway.target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        request = wpb.CreateWorkflowRequest(
            title="audit crash", plan=[step(name, **parameters) for name, parameters in steps], max_cycles=500
        )
        created = stub.CreateWorkflow(request, metadata=as_user("carol")).workflow
        workflow_id = created.workflow_id
        approve = wpb.ApproveRequest(workflow_id=workflow_id, etag=created.etag)
        stub.Approve(approve, metadata=as_user("alice"), timeout=5)

        def workflow() -> pb.Workflow:
            return get_workflow(stub, workflow_id, timeout=5)

        deadline = time.monotonic() + 60
        while workflow().progress.done < 2:  # killed in step 3 or later, mid-step
            assert time.monotonic() < deadline, workflow()
            time.sleep(0.02)
        killed_at = workflow().cycle
        pair.processor.kill()
        pair.processor.start()
        deadline = time.monotonic() + 120
        while not workflow().is_completed:
            assert time.monotonic() < deadline, workflow()
            time.sleep(0.1)
        final = workflow()
        assert final.status == S.WORKFLOW_STATUS_COMPLETED, final
        events = watched_events(stub, workflow_id)

        assert_trail_intact(stub, workflow_id, events)
    assert any(e.type == pb.EVENT_TYPE_STARTED and "resumed" in e.message for e in events)
    chunked = [e.message for e in events if e.type == pb.EVENT_TYPE_CYCLE_COMPLETED and ": chunk " in e.message]
    assert len(chunked) > 2 * len(steps), chunked  # the steps really ran chunk by chunk
    assert final.cycle > killed_at > 2
    result = MessageToDict(final.result)
    assert [s["procedure"] for s in result["steps"]] == [name for name, _ in steps]
    for number, ((name, _), got, want) in enumerate(zip(steps, result["steps"], expected, strict=True), start=1):
        assert "findings" not in got["result"] and got["result"]["summary"] == want["summary"], name
        # Every finding stored exactly once, in the order an uninterrupted run finds them.
        stored = [
            (f.severity, list(f.entry_ids), f.amount, f.explanation) for f in stored_findings(pair, workflow_id, number)
        ]
        assert stored == [(f["severity"], f["entry_ids"], f["amount"], f["explanation"]) for f in want["findings"]], (
            name
        )


def stored_findings(pair: Pair, workflow_id: str, step_number: int) -> list[pb.Finding]:
    found: list[pb.Finding] = []
    token = ""
    with grpc.insecure_channel(pair.gateway.target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        while True:
            request = wpb.ListFindingsRequest(
                workflow_id=workflow_id,
                filter=pb.FindingsFilter(steps=[step_number], order="found"),
                page_size=1000,
                page_token=token,
            )
            page = stub.ListFindings(request, metadata=as_user("observer"), timeout=10)
            found += page.findings
            token = page.next_page_token
            if not token:
                return found

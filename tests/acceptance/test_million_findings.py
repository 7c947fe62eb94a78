"""A run with a million findings ends, is watched to its end, and every finding can be listed
and exported: no message carries the findings, so none can outgrow a message."""

from __future__ import annotations

import csv
import io
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from tests.support import auth
from tests.support.cluster import Pair
from tests.support.grpc_helpers import as_user, step

pytestmark = pytest.mark.timeout(900)  # a minute or two on a busy machine: the work is real

MILLION = 1_000_000
MAX_RESULT_BYTES = 64 * 1024


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_million_findings_are_stored_listed_and_exported(pair: Pair) -> None:
    with grpc.insecure_channel(pair.gateway.target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        plan = [step("test_findings", count=MILLION, per_chunk=50_000), step("test_noop")]
        request = wpb.CreateWorkflowRequest(title="a million findings", plan=plan, max_cycles=100)
        created = stub.CreateWorkflow(request, metadata=as_user("carol")).workflow
        workflow_id = created.workflow_id
        approve = wpb.ApproveRequest(workflow_id=workflow_id, etag=created.etag)
        stub.Approve(approve, metadata=as_user("alice"), timeout=10)

        last = None
        deadline = time.monotonic() + 600
        while last is None or not last.is_completed:  # the watch ends, as a watch of any run does
            assert time.monotonic() < deadline
            watch = stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=as_user("observer"))
            try:
                for message in watch:
                    last = message.snapshot
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc  # (a restart would be one)
        assert last.status == pb.WORKFLOW_STATUS_COMPLETED, last

        workflow = stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=workflow_id), metadata=as_user("observer"))
        assert workflow.workflow.result.ByteSize() < MAX_RESULT_BYTES
        first = stub.ListFindings(
            wpb.ListFindingsRequest(workflow_id=workflow_id, page_size=1000), metadata=as_user("observer")
        )
        assert first.total == MILLION and len(first.findings) == 1000 and first.next_page_token
        assert first.findings[0].severity == "high"
        processor_peak = peak_rss_mib(pair.processor.pid)

    url = f"http://127.0.0.1:{pair.gateway.rest_port}/workflows/{workflow_id}/findings/export?format=csv"
    http = urllib.request.Request(url, headers=auth.headers("observer", ("viewer",)))
    ids = set()
    with urllib.request.urlopen(http, timeout=600) as response:
        assert response.headers["Content-Type"].startswith("text/csv")
        for row in csv.DictReader(io.TextIOWrapper(response, encoding="utf-8", newline="")):
            ids.add(row["finding_id"])
    assert len(ids) == MILLION and "f1" in ids and f"f{MILLION}" in ids
    assert processor_peak < 1024, f"the processor peaked at {processor_peak:.0f} MiB"

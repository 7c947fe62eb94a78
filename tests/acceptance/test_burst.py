"""A burst of WatchStatus streams opened at once on one gateway, from another process: every
one gets its first message. gRPC's defaults would refuse calls past 1,000 waiting to be picked
up (at random, CANCELLED, nothing logged); the servers raise those limits in one place
(`auditflow.serving`), and this test keeps an upgrade from silently undoing it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc

from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from tests.support import auth
from tests.support.cluster import ROOT, Pair
from tests.support.grpc_helpers import as_user, step

STREAMS = 4000  # past gRPC's default soft (1,000) and hard (3,000) limits of calls waiting

CLIENT = """
import asyncio, json, sys, time
import grpc
from auditflow.v1 import workflow_service_pb2 as wpb, workflow_service_pb2_grpc as wpb_grpc

target, workflow_id, count, token = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
metadata = (("authorization", "Bearer " + token),)

async def one(stub, opened):
    call = stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=metadata)
    try:
        first = await asyncio.wait_for(call.read(), 90)
        return "ok" if first is not grpc.aio.EOF and first.event.sequence == 1 else "no message"
    except grpc.aio.AioRpcError as error:
        return error.code().name
    except asyncio.TimeoutError:
        return "timeout"
    finally:
        call.cancel()

async def main():
    channels = [grpc.aio.insecure_channel(target) for _ in range(8)]
    stubs = [wpb_grpc.WorkflowServiceStub(c) for c in channels]
    started = time.monotonic()
    results = await asyncio.gather(*(one(stubs[i % 8], started) for i in range(count)))
    outcome = {}
    for result in results:
        outcome[result] = outcome.get(result, 0) + 1
    outcome["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(outcome))
    for c in channels:
        await c.close()

asyncio.run(main())
"""


def test_a_burst_of_streams_is_admitted_whole(pair: Pair, tmp_path: Path) -> None:
    with grpc.insecure_channel(pair.gateway.target) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        request = wpb.CreateWorkflowRequest(title="burst", plan=[step("test_noop")])
        workflow_id = stub.CreateWorkflow(request, metadata=as_user("carol")).workflow.workflow_id
    script = tmp_path / "burst_client.py"
    script.write_text(textwrap.dedent(CLIENT))
    token = auth.jwt_for("watcher", ("viewer",))
    done = subprocess.run(
        [sys.executable, str(script), pair.gateway.target, workflow_id, str(STREAMS), token],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome.get("ok") == STREAMS, (outcome, pair.gateway.log())

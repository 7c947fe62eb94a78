"""`auditflow demo`'s mechanics with stand-in servers.

The demo starts `python -m processor` and `python -m gateway`; run from a directory holding
fake packages of those names, it starts the fakes instead (the current directory comes first
on `sys.path` with `-m`). This checks start-up, health waiting, submit, approve, watch,
result and SIGTERM shut-down without the real servers; the acceptance tests run the real one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

COMMON = """
import argparse, signal, sys, threading
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--host"); p.add_argument("--port", type=int); p.add_argument("--database-url")
    p.add_argument("--processor-target", default=""); p.add_argument("--rest-port", default="")
    p.add_argument("--tokens-file", required=True); p.add_argument("--processor-token-file", default="")
    p.add_argument("--trail-signing-key", default=""); p.add_argument("--trail-public-keys", default="")
    return p.parse_args()

def principal_of(context, tokens_file):
    # Who the bearer token names in the tokens file the demo made (only hashes are there).
    import hashlib, tomllib
    scheme, _, token = dict(context.invocation_metadata())["authorization"].partition(" ")
    assert scheme == "Bearer"
    digest = hashlib.sha256(token.encode()).hexdigest()
    with open(tokens_file, "rb") as handle:
        entries = tomllib.load(handle)["token"]
    return next(e["principal"] for e in entries if e["sha256"] == digest)

def serve(add, args, name):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    add(server)
    h = health.HealthServicer()
    h.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(h, server)
    server.add_insecure_port(f"{args.host}:{args.port}")
    open(args.database_url.removeprefix("sqlite:///"), "w").close()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # before "serving": see below
    server.start()
    print(f"{name} serving on {args.port}", flush=True)
    stop.wait()
    print(f"{name} got SIGTERM", flush=True)
    server.stop(1).wait()
"""

PROCESSOR = """
from _fake_common import parse, serve
serve(lambda server: None, parse(), "processor")
"""

GATEWAY = """
import time
from _fake_common import parse, principal_of, serve
from auditflow import trail
from auditflow.v1 import workflow_pb2 as pb, workflow_service_pb2 as api, workflow_service_pb2_grpc as api_grpc

S = pb.WorkflowStatus
WF = "wf_" + "a" * 32
ETAG = "e" * 64
OUTCOME = S.Value("WORKFLOW_STATUS_" + "@OUTCOME@")
STEPS = [(S.WORKFLOW_STATUS_RUNNING, 1), (S.WORKFLOW_STATUS_RUNNING, 2), (OUTCOME, 3)]

def chain():
    # The run's events with real hashes, linked as the servers link them: the demo's own
    # check of the trail recomputes them.
    events, previous = [], trail.GENESIS
    for seq, (status, done) in enumerate(STEPS, start=1):
        event = pb.WorkflowEvent(workflow_id=WF, sequence=seq, status=status, cycle=done,
                                 progress=pb.Progress(done=done, total=3), message=f"step {done}")
        event.time.FromSeconds(1_700_000_000 + seq)
        event.hash = previous = trail.link(previous, trail.Content.of_message(event))
        events.append(event)
    return events

EVENTS = chain()

class Gateway(api_grpc.WorkflowServiceServicer):
    def CreateWorkflow(self, request, context):
        assert principal_of(context, ARGS.tokens_file) == "demo-submitter"
        return api.CreateWorkflowResponse(workflow=pb.Workflow(workflow_id=WF, title=request.title, etag=ETAG,
                                          status=S.WORKFLOW_STATUS_AWAITING_APPROVAL, plan=request.plan))

    def Approve(self, request, context):
        assert principal_of(context, ARGS.tokens_file) == "demo-approver"
        assert request.etag == ETAG  # the approval is bound to the plan the demo showed
        return api.ApproveResponse(workflow_id=request.workflow_id, approved=True, immediate_response=True,
                                   background_processing_started=True, processing_message="started",
                                   workflow_status=S.WORKFLOW_STATUS_APPROVED)

    def _snap(self, status, done, seq):
        snap = pb.StatusSnapshot(workflow_id=WF, status=status, cycle=done, max_cycles=15,
                                 progress=pb.Progress(done=done, total=3), last_message=f"step {done}",
                                 last_sequence=seq)
        if status == S.WORKFLOW_STATUS_FAILED:
            snap.error.reason, snap.error.message = "CRITICAL_ERROR", "ledger unreadable"
        return snap

    def WatchStatus(self, request, context):
        for event, (status, done) in zip(EVENTS, STEPS):
            time.sleep(0.05)
            snap = self._snap(status, done, event.sequence)
            yield api.WatchStatusResponse(heartbeat=pb.Heartbeat(), snapshot=snap)
            yield api.WatchStatusResponse(event=event, snapshot=snap)

    def VerifyTrail(self, request, context):
        return api.VerifyTrailResponse(intact=True, events_checked=3, head_sequence=3, head_hash=EVENTS[-1].hash)

    def GetWorkflow(self, request, context):
        workflow = pb.Workflow(workflow_id=WF, title="demo", status=OUTCOME, progress=pb.Progress(done=3, total=3),
                               last_sequence=3, etag=ETAG)
        workflow.result.update({"rows": 12, "total_amount": "1234.56"})
        return api.GetWorkflowResponse(workflow=workflow)

ARGS = parse()
serve(lambda server: api_grpc.add_WorkflowServiceServicer_to_server(Gateway(), server), ARGS, "gateway")
"""


def make_fakes(root: Path, outcome: str) -> None:
    (root / "_fake_common.py").write_text(textwrap.dedent(COMMON))
    for name, source in (("processor", PROCESSOR), ("gateway", GATEWAY)):
        package = root / name
        package.mkdir()
        (package / "__init__.py").write_text("")
        (package / "__main__.py").write_text(textwrap.dedent(source).replace("@OUTCOME@", outcome))


def run_demo(cwd: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "auditflow.cli", "demo", "--data-dir", "data", *extra],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(("outcome", "code"), [("COMPLETED", 0), ("FAILED", 1)])
def test_demo_runs_the_sample_and_stops_both_servers(tmp_path: Path, outcome: str, code: int) -> None:
    make_fakes(tmp_path, outcome)
    result = run_demo(tmp_path)
    assert result.returncode == code, result.stdout + result.stderr
    out = result.stdout
    assert "approved                       true" in out
    assert "latency" in out and " ms" in out
    assert "#3 " in out  # one line per event (stdout is not a terminal)
    assert '"total_amount": "1234.56"' in out
    if code:
        assert "CRITICAL_ERROR: ledger unreadable" in result.stderr
    assert "servers stopped" in result.stdout
    if not code:  # the trail is checked by the gateway and recomputed by the demo itself
        assert "server: trail intact, 3 events" in out and "here:   3 events recomputed, head #3 " in out
        assert "differ" not in out  # the head recomputed here is the one the gateway said
    credentials = tmp_path / "data" / "credentials"
    assert f"--token-file {Path('data/credentials/approver.token')} whoami" in out  # how to use them
    for name in ("submitter", "approver", "viewer", "gateway-to-processor"):
        token = (credentials / f"{name}.token").read_text().strip()
        assert token.startswith("aft_") and (credentials / f"{name}.token").stat().st_mode & 0o077 == 0
        assert token not in out + result.stderr  # printed nowhere: the files are named instead
    for name in ("gateway", "processor"):
        log = (tmp_path / "data" / f"{name}.log").read_text()
        assert f"{name} got SIGTERM" in log, log
        assert (tmp_path / "data" / f"{name}.db").exists()


def test_demo_start_up_failure_shows_the_log_tail(tmp_path: Path) -> None:
    make_fakes(tmp_path, "COMPLETED")
    # It fails once the gateway serves (and so handles SIGTERM): failing earlier, the demo
    # could stop a gateway that has not yet set up its handler, and the log would say nothing.
    (tmp_path / "processor" / "__main__.py").write_text(
        textwrap.dedent("""
        import pathlib, sys, time
        log = pathlib.Path("data/gateway.log")
        deadline = time.monotonic() + 30
        while "serving" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.02)
        print("cannot open database")
        sys.exit(3)
        """)
    )
    result = run_demo(tmp_path)
    assert result.returncode == 2
    assert "error: processor exited with code 3 while starting" in result.stderr
    assert "cannot open database" in result.stderr
    assert "gateway got SIGTERM" in (tmp_path / "data" / "gateway.log").read_text()


def test_demo_stops_the_servers_on_sigterm(tmp_path: Path) -> None:
    make_fakes(tmp_path, "COMPLETED")
    # A processor that never becomes SERVING keeps the demo waiting until we stop it.
    (tmp_path / "processor" / "__main__.py").write_text("import time\nprint('slow', flush=True)\ntime.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    demo = subprocess.Popen(
        [sys.executable, "-m", "auditflow.cli", "demo", "--data-dir", "data", "--startup-timeout", "50"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = tmp_path / "data" / "gateway.log"
    deadline = time.monotonic() + 20
    while "serving" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the fake gateway did not start"
        time.sleep(0.1)
    demo.send_signal(signal.SIGTERM)
    out, err = demo.communicate(timeout=30)
    assert demo.returncode == 130, err
    assert "interrupted" in err and "servers stopped" in out
    assert "gateway got SIGTERM" in log.read_text()

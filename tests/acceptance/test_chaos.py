"""Chaos on PostgreSQL: 2 gateways and 3 processors (subprocesses) on a private cluster; 300
workflows approved through both gateways while processors are SIGKILLed and restarted three
times, one is SIGSTOPped past its lease, and the database is restarted once. Every
acknowledged approval reaches COMPLETED, every trail is gap-free and intact, no client ever
sees INTERNAL or UNKNOWN, and no two processes run a workflow's steps at the same time (but
a step the freeze caught midway)."""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from pathlib import Path

import grpc
from sqlalchemy import create_engine, text

from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from tests.support import auth
from tests.support.cluster import ServerProcess
from tests.support.grpc_helpers import as_user, step
from tests.support.pgcluster import PrivateCluster, private_cluster

WORKFLOWS = 300
STEPS = 4
LEASE = 3.0
RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def databases(cluster: PrivateCluster) -> tuple[str, str]:
    engine = create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for name in ("gateway", "processor"):
            conn.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return cluster.url("gateway"), cluster.url("processor")


def servers(tmp_path: Path, gateway_url: str, processor_url: str) -> tuple[list[ServerProcess], list[ServerProcess]]:
    processors = []
    for i in range(3):
        workdir = tmp_path / f"p{i}"
        workdir.mkdir()
        args = [
            *auth.processor_args(),
            "--database-url",
            processor_url,
            "--lease-seconds",
            str(LEASE),
            "--poll-interval",
            "0.2",
            "--cycle-delay",
            "0.01",
            "--worker-id",
            f"p{i}",
        ]
        processors.append(ServerProcess("processor", workdir, args, log_level="INFO"))
    target = ",".join(p.target for p in processors)
    gateways = []
    for i in range(2):
        workdir = tmp_path / f"g{i}"
        workdir.mkdir()
        args = ["--processor-target", target, *auth.gateway_args(), "--database-url", gateway_url]
        gateways.append(ServerProcess("gateway", workdir, args, log_level="INFO"))
    return processors, gateways


def call(method: object, request: object, metadata: object, refusals: list[grpc.StatusCode]) -> object:
    """One call, retried while the system says to retry; every refusal's code is kept."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return method(request, metadata=metadata, timeout=10)  # type: ignore[operator]
        except grpc.RpcError as exc:
            refusals.append(exc.code())  # type: ignore[attr-defined]
            if exc.code() not in RETRIED or time.monotonic() > deadline:  # type: ignore[attr-defined]
                raise
            time.sleep(0.2)


def test_chaos_on_postgresql(tmp_path: Path) -> None:
    journals = tmp_path / "journals"
    journals.mkdir()
    refusals: list[grpc.StatusCode] = []
    with private_cluster() as cluster:
        gateway_url, processor_url = databases(cluster)
        processors, gateways = servers(tmp_path, gateway_url, processor_url)
        for server in [*processors, *gateways]:
            server.start()
        channels = [grpc.insecure_channel(g.target) for g in gateways]
        stubs = [wpb_grpc.WorkflowServiceStub(c) for c in channels]
        try:
            ids = []
            etags: dict[str, str] = {}
            for n in range(WORKFLOWS):
                journal = str(journals / f"{n}.txt")
                plan = [step("test_journal", journal=journal, step=s, seconds=0.01) for s in range(1, STEPS + 1)]
                request = wpb.CreateWorkflowRequest(title=f"chaos {n}", plan=plan, request_id=f"chaos-{n}")
                created = call(stubs[n % 2].CreateWorkflow, request, as_user("carol"), refusals)
                ids.append(created.workflow.workflow_id)  # type: ignore[attr-defined]
                etags[ids[-1]] = created.workflow.etag  # type: ignore[attr-defined]
            acknowledged: list[str] = []

            def approve_all() -> None:
                for n, workflow_id in enumerate(ids):
                    request = wpb.ApproveRequest(
                        workflow_id=workflow_id, etag=etags[workflow_id], request_id=f"approve-{n}"
                    )
                    call(stubs[n % 2].Approve, request, as_user("alice"), refusals)
                    acknowledged.append(workflow_id)
                    time.sleep(0.01)

            approver = threading.Thread(target=approve_all)
            approver.start()
            rng = random.Random(7)
            frozen: list[tuple[float, float]] = []
            thaw: threading.Timer | None = None
            # The stimuli: kills, a freeze, a database restart. Each waits for its share of the
            # approvals, so that it lands on work in flight however fast this machine is.
            for round_ in range(3):
                wait_for_count(acknowledged, (round_ + 1) * WORKFLOWS // 4, approver)
                victim = rng.choice(processors)
                victim.kill()
                victim.start(wait=False)
                if round_ == 1:  # frozen past its lease while the approvals (and the rounds) go on
                    stopped = rng.choice([p for p in processors if p is not victim])
                    os.kill(stopped.pid, signal.SIGSTOP)
                    thaw = threading.Timer(LEASE + 1.0, resume, (stopped, time.time(), frozen))
                    thaw.start()
                if round_ == 2:
                    cluster.stop("fast")
                    time.sleep(1.0)  # (the outage)
                    cluster.start()
            assert thaw is not None
            thaw.join()
            approver.join(timeout=300)
            assert not approver.is_alive() and len(acknowledged) == WORKFLOWS

            for n, workflow_id in enumerate(acknowledged):
                stub = stubs[n % 2]
                deadline = time.monotonic() + 180
                while True:
                    get = wpb.GetWorkflowRequest(workflow_id=workflow_id)
                    workflow = call(stub.GetWorkflow, get, as_user("observer"), refusals).workflow  # type: ignore[attr-defined]
                    if workflow.is_completed:
                        break
                    assert time.monotonic() < deadline, workflow
                    time.sleep(0.1)
                assert workflow.status == pb.WORKFLOW_STATUS_COMPLETED, workflow
                watch = stub.WatchStatus(
                    wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=as_user("observer"), timeout=60
                )
                events = []
                try:
                    events.extend(m.event for m in watch if m.HasField("event"))
                except grpc.RpcError as exc:  # (a watch of a finished run must end: say where it stopped)
                    seen = [e.sequence for e in events]
                    raise AssertionError(f"{workflow_id}: watch ended {exc.code()} after {seen}") from exc  # type: ignore[attr-defined]
                assert [e.sequence for e in events] == list(range(1, len(events) + 1)), workflow_id
                verified = call(
                    stub.VerifyTrail, wpb.VerifyTrailRequest(workflow_id=workflow_id), as_user("observer"), refusals
                )
                assert verified.intact, (workflow_id, verified)  # type: ignore[attr-defined]
                assert_no_overlap(journals / f"{n}.txt", frozen)
        finally:
            for channel in channels:
                channel.close()
            for server in [*gateways, *processors]:
                if server.proc is not None and server.proc.poll() is None:
                    os.kill(server.pid, signal.SIGCONT)
                server.stop()
    assert not {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN} & set(refusals), refusals


def resume(stopped: ServerProcess, since: float, frozen: list[tuple[float, float]]) -> None:
    os.kill(stopped.pid, signal.SIGCONT)
    frozen.append((since, time.time()))


def wait_for_count(acknowledged: list[str], count: int, approver: threading.Thread) -> None:
    """Until `count` approvals are acknowledged (the approver still running)."""
    deadline = time.monotonic() + 300
    while len(acknowledged) < count:
        assert approver.is_alive() and time.monotonic() < deadline, len(acknowledged)
        time.sleep(0.01)


def assert_no_overlap(journal: Path, frozen: list[tuple[float, float]]) -> None:
    """No two processes ran this workflow's steps at once, but for a step a freeze caught; and
    the lease epoch each step ran under only grows, one epoch per process."""
    started: dict[tuple[int, int], tuple[float, int]] = {}
    ran = []
    for line in journal.read_text().splitlines():
        what, pid, number, when, epoch = line.split()
        key = (int(pid), int(number))
        if what == "start":
            started[key] = (float(when), int(epoch))
        elif key in started:
            began, epoch_at_start = started.pop(key)
            ran.append((key[0], began, float(when), epoch_at_start))
    caught = [r for r in ran if any(r[1] <= end and began <= r[2] for began, end in frozen)]
    others = [r for r in ran if r not in caught]
    for a in others:
        for b in others:
            if a[0] != b[0]:
                assert a[2] <= b[1] or b[2] <= a[1], (journal.name, a, b)
    in_order = sorted(others, key=lambda r: r[1])
    for a, b in itertools.pairwise(in_order):
        assert a[3] <= b[3] and (a[3] < b[3] or a[0] == b[0]), (journal.name, a, b)

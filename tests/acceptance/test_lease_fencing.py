"""A processor frozen (SIGSTOP) past its lease, then resumed (SIGCONT), never starts another
step of the run: by its own clock its lease may be gone, so it renews first, finds the run
taken by the other processor, and lets it go. Two processor subprocesses on one PostgreSQL
database; the test procedure journals which process runs which step when."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from auditflow.v1 import processor_service_pb2 as ps
from auditflow.v1 import processor_service_pb2_grpc as ps_grpc
from auditflow.v1 import workflow_pb2 as pb
from tests.support import auth
from tests.support.cluster import ServerProcess
from tests.support.postgres import fresh_database
from tests.support.processor_harness import enqueue_request, step

STEPS = 6
LEASE = 2.0
LINK = (("authorization", f"Bearer {auth.GATEWAY_TOKEN}"),)  # the gateway's service token


def processor(workdir: Path, url: str, name: str, poll: float) -> ServerProcess:
    workdir.mkdir()
    args = [*auth.processor_args(), "--database-url", url, "--lease-seconds", str(LEASE), "--worker-id", name,
            "--poll-interval", str(poll), "--cycle-delay", "0.5"]  # fmt: skip
    return ServerProcess("processor", workdir, args, log_level="INFO")


def journal_lines(path: Path) -> Iterator[tuple[str, int, int, float]]:
    for line in path.read_text().splitlines():
        what, pid, number, when = line.split()
        yield what, int(pid), int(number), float(when)


def intervals(path: Path) -> list[tuple[int, int, float, float]]:
    """(pid, step, start, end) of every step that ended."""
    started: dict[tuple[int, int], float] = {}
    done = []
    for what, pid, number, when in journal_lines(path):
        if what == "start":
            started[(pid, number)] = when
        else:
            done.append((pid, number, started.pop((pid, number)), when))
    return done


def test_a_resumed_processor_starts_no_step_on_a_lost_lease(tmp_path: Path) -> None:
    journal = tmp_path / "journal.txt"
    journal.touch()
    with fresh_database("fencing") as url:
        # The second looks for claimable runs only every second (an expired lease notifies
        # nobody): the first resumes with its lease expired and most likely not yet taken, and
        # must not start the next step on it (the second would take the run mid-step).
        first = processor(tmp_path / "a", url, "first", poll=0.2)
        second = processor(tmp_path / "b", url, "second", poll=1.0)
        first.start()
        second.start()
        try:
            with grpc.insecure_channel(first.target) as channel:
                stub = ps_grpc.ProcessorServiceStub(channel)
                plan = [step("test_journal", journal=str(journal), step=n, seconds=1.0) for n in range(1, STEPS + 1)]
                request = enqueue_request(plan, max_cycles=STEPS + 10)
                assert stub.Enqueue(request, metadata=LINK).run.snapshot.status == pb.WORKFLOW_STATUS_RUNNING
                deadline = time.monotonic() + 60
                while not any(w == "end" and n >= 2 for w, _p, n, _t in journal_lines(journal)):
                    assert time.monotonic() < deadline, journal.read_text()
                    time.sleep(0.02)
                os.kill(first.pid, signal.SIGSTOP)  # frozen between two steps (the cycle delay)...
                frozen_at = time.time()
                time.sleep(LEASE + 0.3)  # ...until just past its lease (the stimulus, not a wait for a result)
                os.kill(first.pid, signal.SIGCONT)
                with grpc.insecure_channel(second.target) as second_channel:
                    watch = ps_grpc.ProcessorServiceStub(second_channel).WatchStatus(
                        ps.ProcessorServiceWatchStatusRequest(workflow_id=request.workflow_id),
                        metadata=LINK,
                        timeout=90,
                    )
                    events = [m.event for m in watch if m.HasField("event")]
        finally:
            for server in (first, second):
                if server.proc is not None and server.proc.poll() is None:
                    os.kill(server.pid, signal.SIGCONT)
                server.stop()
    assert events[-1].type == pb.EVENT_TYPE_COMPLETED, events[-1]
    ran = intervals(journal)
    assert {number for _pid, number, _s, _e in ran} == set(range(1, STEPS + 1))  # every step ran to its end
    # No two processes ran steps at the same time, but for the step the freeze caught midway
    # (its thread was frozen with the process; another may redo it meanwhile).
    caught = [r for r in ran if r[2] <= frozen_at <= r[3]]
    others = [r for r in ran if r not in caught]
    for a in others:
        for b in others:
            if a[0] != b[0]:
                assert a[3] <= b[2] or b[3] <= a[2], (a, b, frozen_at)

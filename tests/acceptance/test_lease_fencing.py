"""A processor frozen (SIGSTOP) past its lease, then resumed (SIGCONT), never starts another
step of the run: by its own clock its lease may be gone, so it renews first, finds the run
taken by the other processor, and lets it go. Two processor subprocesses on one database
(PostgreSQL, and SQLite for the takeover); the test procedure journals which process runs
which step when, under which lease epoch."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, text

from auditflow.v1 import processor_service_pb2 as ps
from auditflow.v1 import processor_service_pb2_grpc as ps_grpc
from auditflow.v1 import workflow_pb2 as pb
from tests.support import auth
from tests.support.cluster import ServerProcess
from tests.support.postgres import database_of_kind, fresh_database
from tests.support.processor_harness import enqueue_request, step

STEPS = 6
# Seconds. Renewed every third of it: a processor loses its lease only to a stall of two
# thirds of it. At 2 s a busy machine once stalled the first processor that long before the
# test froze it (the other took the run over early, and the test failed for the machine).
LEASE = 4.0
# The takeover test's: its first processor must keep the run until the test freezes it. With
# a lease of 4 s, two test suites at once on a 2-core machine once held its renewals (durable
# commits) back for more than two thirds of it, and the other processor took the run early.
TAKEOVER_LEASE = 8.0
FROZEN_DELAY = 6.0  # the first processor's pause between cycles there: the freeze lands in it
LINK = (("authorization", f"Bearer {auth.GATEWAY_TOKEN}"),)  # the gateway's service token


def processor(
    workdir: Path, url: str, name: str, poll: float, delay: float = 0.5, lease: float = LEASE
) -> ServerProcess:
    workdir.mkdir()
    args = [
        *auth.processor_args(),
        "--database-url",
        url,
        "--lease-seconds",
        str(lease),
        "--worker-id",
        name,
        "--poll-interval",
        str(poll),
        "--cycle-delay",
        str(delay),
    ]
    return ServerProcess("processor", workdir, args, log_level="INFO")


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One database both processors use."""
    with database_of_kind(request.param, tmp_path, "takeover") as url:
        yield url


def journal_lines(path: Path) -> Iterator[tuple[str, int, int, float, int]]:
    for line in path.read_text().splitlines():
        what, pid, number, when, epoch = line.split()
        yield what, int(pid), int(number), float(when), int(epoch)


def intervals(path: Path) -> list[tuple[int, int, float, float, int]]:
    """(pid, step, start, end, lease epoch) of every step that ended."""
    started: dict[tuple[int, int], float] = {}
    done = []
    for what, pid, number, when, epoch in journal_lines(path):
        if what == "start":
            started[(pid, number)] = when
        else:
            done.append((pid, number, started.pop((pid, number)), when, epoch))
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
                wait_until(
                    lambda: any(w == "end" and n >= 2 for w, _p, n, _t, _e in journal_lines(journal)), "step 2 ended"
                )
                os.kill(first.pid, signal.SIGSTOP)  # frozen between two steps (the cycle delay)...
                frozen_at = time.time()
                time.sleep(LEASE + 0.3)  # ...until just past its lease (the stimulus, not a wait for a result)
                os.kill(first.pid, signal.SIGCONT)
                events = events_via(second, request.workflow_id)
        finally:
            resume_and_stop(first, second)
    assert events[-1].type == pb.EVENT_TYPE_COMPLETED, events[-1]
    ran = intervals(journal)
    assert {r[1] for r in ran} == set(range(1, STEPS + 1))  # every step ran to its end
    # No two processes ran steps at the same time, but for the step the freeze caught midway
    # (its thread was frozen with the process; another may redo it meanwhile).
    caught = [r for r in ran if r[2] <= frozen_at <= r[3]]
    others = [r for r in ran if r not in caught]
    for a in others:
        for b in others:
            if a[0] != b[0]:
                assert a[3] <= b[2] or b[3] <= a[2], (a, b, frozen_at)
    # Each process ran its steps under its own lease epoch, and a later claim's is higher.
    epochs = {pid: {r[4] for r in ran if r[0] == pid} for pid in {r[0] for r in ran}}
    assert all(len(e) == 1 for e in epochs.values()), epochs
    by_start = sorted(others, key=lambda r: r[2])
    assert [r[4] for r in by_start] == sorted(r[4] for r in by_start), by_start


def test_a_processor_resumed_after_a_takeover_starts_no_step_under_its_old_epoch(
    tmp_path: Path, shared_url: str
) -> None:
    """The zombie case, made deterministic: the first processor is frozen between two steps
    (its long cycle delay), stays frozen until the second has taken the run over under a new
    epoch and run a step, and is then resumed. It must start no step at all from then on: it
    learns it lost the lease (a failed renewal, the re-read before the next step) and lets the
    run go, and the second completes it."""
    journal = tmp_path / "journal.txt"
    journal.touch()
    first = processor(tmp_path / "a", shared_url, "first", poll=0.2, delay=FROZEN_DELAY, lease=TAKEOVER_LEASE)
    second = processor(tmp_path / "b", shared_url, "second", poll=0.2, delay=0.2, lease=TAKEOVER_LEASE)
    first.start()
    second.start()
    try:
        with grpc.insecure_channel(first.target) as channel:
            plan = [step("test_journal", journal=str(journal), step=n, seconds=0.2) for n in range(1, STEPS + 1)]
            request = enqueue_request(plan, max_cycles=STEPS + 10)
            stub = ps_grpc.ProcessorServiceStub(channel)
            assert stub.Enqueue(request, metadata=LINK).run.snapshot.status == pb.WORKFLOW_STATUS_RUNNING
        wid = request.workflow_id
        wait_until(lambda: lease_of(shared_url, wid)[0] >= 1, "the first processor committed a cycle")
        os.kill(first.pid, signal.SIGSTOP)
        frozen_at = time.time()
        # Frozen between two steps: every step it began has ended and been checkpointed.
        cycle, owner, epoch = lease_of(shared_url, wid)
        mine = [(w, n) for w, p, n, _t, _e in journal_lines(journal) if p == first.pid]
        assert owner == "first" and mine == [(w, n) for n in range(1, cycle + 1) for w in ("start", "end")], mine
        wait_until(
            lambda: any(w == "end" and p == second.pid for w, p, _n, _t, _e in journal_lines(journal)),
            "the second processor took the run over and ran a step",
        )
        os.kill(first.pid, signal.SIGCONT)
        wait_until(lambda: let_go(first, wid), "the resumed processor let the run go")
        events = events_via(second, wid)
    finally:
        resume_and_stop(first, second)
    assert events[-1].type == pb.EVENT_TYPE_COMPLETED, events[-1]
    lines = list(journal_lines(journal))
    stale = [line for line in lines if line[0] == "start" and line[1] == first.pid and line[3] >= frozen_at]
    assert stale == [], stale  # 0 steps started by the resumed processor
    assert {e for _w, p, _n, _t, e in lines if p == first.pid} == {epoch}
    assert {e for _w, p, _n, _t, e in lines if p == second.pid} == {epoch + 1}
    assert sorted(n for w, _p, n, _t, _e in lines if w == "end") == list(range(1, STEPS + 1))  # each step once


def let_go(server: ServerProcess, workflow_id: str) -> bool:
    """Whether `server` logged that it stopped driving the run (it lost the lease)."""
    lines = server.log_path.read_text(errors="replace").splitlines()
    return any(f"{workflow_id}: " in line and "abandoning the run" in line for line in lines)


def lease_of(url: str, workflow_id: str) -> tuple[int, str | None, int]:
    """(checkpointed cycle, lease owner, lease epoch) of the run, read from its database."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT cycle, lease_owner, lease_epoch FROM runs WHERE workflow_id = :w"), {"w": workflow_id}
            ).one()
            return int(row[0]), row[1], int(row[2])
    finally:
        engine.dispose()


def test_the_lease_epoch_fences_a_step_the_freeze_caught_midway(tmp_path: Path) -> None:
    """What the pre-step check cannot prevent, the epoch fences: a processor frozen in the middle
    of a step past its lease finishes that step after another processor has taken the run over
    and redone it. The step writes to an outside store that refuses an epoch lower than one it
    has seen, so the late write of the old lease is refused, and the run completes once."""
    outside = tmp_path / "outside.db"
    with fresh_database("fenced") as url:
        first = processor(tmp_path / "a", url, "first", poll=0.2)
        second = processor(tmp_path / "b", url, "second", poll=0.2)
        first.start()
        try:
            with grpc.insecure_channel(first.target) as channel:
                stub = ps_grpc.ProcessorServiceStub(channel)
                plan = [step("test_fenced", store=str(outside), step=1, seconds=LEASE * 2)]
                request = enqueue_request(plan, max_cycles=10)
                assert stub.Enqueue(request, metadata=LINK).run.snapshot.status == pb.WORKFLOW_STATUS_RUNNING
                wait_until(lambda: writes(outside), "the first processor began the step")
                os.kill(first.pid, signal.SIGSTOP)  # frozen mid-step, its lease left to expire
                second.start()  # (only now, so that the run cannot start there)
                wait_until(lambda: any(w[3] == 2 for w in writes(outside)), "the second processor began the step")
                os.kill(first.pid, signal.SIGCONT)  # the first's step ends: its "end" comes late
                wait_until(lambda: sum(w[2] == "end" for w in writes(outside)) == 2, "both ended the step")
                events = events_via(second, request.workflow_id)
        finally:
            resume_and_stop(first, second)
    assert events[-1].type == pb.EVENT_TYPE_COMPLETED, events[-1]
    by_pid = {w[4]: w for w in writes(outside) if w[2] == "end"}
    late, redo = by_pid[first.pid], by_pid[second.pid]
    assert (late[3], late[5]) == (1, 0), late  # the old lease's write: refused
    assert (redo[3], redo[5]) == (2, 1), redo  # the new lease's write: accepted
    # The step's one checkpoint is the second processor's: the first's commit found its lease gone.
    assert [e.cycle for e in events if e.type == pb.EVENT_TYPE_CYCLE_COMPLETED] == [1], events


def writes(path: Path) -> list[tuple[str, int, str, int, int, int]]:
    """(workflow_id, step, begin/end, epoch, pid, accepted) of every write the outside store saw."""
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        try:
            return list(db.execute("SELECT workflow_id, step, what, epoch, pid, accepted FROM writes ORDER BY rowid"))
        except sqlite3.OperationalError:  # the table is not there yet
            return []


def events_via(server: ServerProcess, workflow_id: str) -> list[pb.WorkflowEvent]:
    """The run's events, to its end, watched through `server`."""
    with grpc.insecure_channel(server.target) as channel:
        request = ps.ProcessorServiceWatchStatusRequest(workflow_id=workflow_id)
        watch = ps_grpc.ProcessorServiceStub(channel).WatchStatus(request, metadata=LINK, timeout=90)
        return [m.event for m in watch if m.HasField("event")]


def resume_and_stop(*servers: ServerProcess) -> None:
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.pid, signal.SIGCONT)
        server.stop()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)

"""The processor on real ports with real SQLite files: enqueue, cycles, failures, cancel,
concurrency, watching, graceful hand-over and lease expiry."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine

import tests.support.procedures as test_procedures
from auditflow import convert, migrations, statuses
from auditflow.convert import utcnow
from auditflow.v1 import processor_service_pb2 as ps
from auditflow.v1 import processor_service_pb2_grpc as ps_grpc
from auditflow.v1 import workflow_pb2 as pb
from processor import store
from processor.claimer import Claimer
from processor.lease import LeaseKeeper
from tests.support import auth
from tests.support.grpc_helpers import details
from tests.support.postgres import fresh_database
from tests.support.processor_harness import (
    E,
    Harnesses,
    S,
    assert_gap_free,
    collect,
    drain,
    enqueue_request,
    events,
    new_id,
    read_until,
    run_row,
    step,
    types,
    watch,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def harnesses(tmp_path: Path) -> AsyncIterator[Harnesses]:
    factory = Harnesses(tmp_path)
    yield factory
    await factory.close()


def is_event(type_: int, **where: int) -> Callable[[ps.ProcessorServiceWatchStatusResponse], bool]:
    def predicate(message: ps.ProcessorServiceWatchStatusResponse) -> bool:
        e = message.event
        return (
            message.WhichOneof("kind") == "event"
            and e.type == type_
            and all(getattr(e, k) == v for k, v in where.items())
        )

    return predicate


def result(snapshot: pb.StatusSnapshot) -> dict[str, Any]:
    return convert.struct_to_dict(snapshot.result)


# --- the happy path -------------------------------------------------------------------------


async def test_enqueued_run_completes_one_step_per_cycle(harnesses: Harnesses) -> None:
    h = await harnesses.start()
    request = enqueue_request([step("test_noop"), step("test_noop"), step("test_noop")], base_sequence=2)
    response = await h.stub.Enqueue(request)
    assert response.created
    # The answer is the run after Enqueue's commit: QUEUED, or already STARTED when a slot
    # was free (then its claim shares the commit).
    snapshot = response.run.snapshot
    assert (snapshot.status, snapshot.last_sequence) in {
        (S.WORKFLOW_STATUS_QUEUED, 3),
        (S.WORKFLOW_STATUS_RUNNING, 4),
    }

    messages = await collect(h.stub, request.workflow_id)

    assert types(messages) == ["QUEUED", "STARTED", *["CYCLE_COMPLETED"] * 3, "COMPLETED"]
    assert_gap_free(messages, first=3)
    evs = events(messages)
    assert [e.cycle for e in evs] == [0, 0, 1, 2, 3, 3]
    assert "alice" in evs[0].message and evs[0].actor == "processor"
    assert evs[3].message == "step 2/3 test_noop done"
    # Every message carries the snapshot as of its event.
    snaps = [m.snapshot for m in messages]
    assert [s.status for s in snaps] == [S.WORKFLOW_STATUS_QUEUED] + [S.WORKFLOW_STATUS_RUNNING] * 4 + [
        S.WORKFLOW_STATUS_COMPLETED
    ]
    assert [(s.progress.done, s.progress.total) for s in snaps[2:5]] == [(1, 3), (2, 3), (3, 3)]
    assert [s.last_sequence for s in snaps] == [e.sequence for e in evs]
    assert snaps[2].is_processing and not snaps[2].is_completed and not snaps[2].HasField("result")
    final = snaps[-1]
    assert final.is_completed and not final.is_processing
    assert [s["procedure"] for s in result(final)["steps"]] == ["test_noop"] * 3

    run = (await h.stub.GetRun(ps.GetRunRequest(workflow_id=request.workflow_id))).run
    assert run.snapshot == final
    assert run.snapshot.max_cycles == 15  # the server default, as the request said 0


async def test_enqueue_is_idempotent(harnesses: Harnesses) -> None:
    h = await harnesses.start()
    request = enqueue_request([step("test_noop")])
    first = await h.stub.Enqueue(request)
    await collect(h.stub, request.workflow_id)
    retry = ps.EnqueueRequest()
    retry.CopyFrom(request)
    retry.title = "a different title"
    retry.base_sequence = 40
    second = await h.stub.Enqueue(retry)

    assert first.created and not second.created
    assert second.run.snapshot.status == S.WORKFLOW_STATUS_COMPLETED
    assert second.run.snapshot.last_sequence == 2 + 4  # QUEUED, STARTED, CYCLE_COMPLETED, COMPLETED
    row = run_row(h.db_path, request.workflow_id)
    assert (row["title"], row["base_sequence"]) == ("test run", 2)


async def test_a_retried_enqueue_returns_the_run_even_if_its_plan_no_longer_validates(
    harnesses: Harnesses, tmp_path: Path
) -> None:
    """The answer to the first Enqueue was lost, then the ledger moved: the retry must not be
    refused (the gateway would end a workflow that the processor is running)."""
    h = await harnesses.start()
    ledger = tmp_path / "ledger.csv"
    ledger.write_text("entry_id,posting_date,account,amount\nJE-1,2026-01-01,6100,1\n")
    request = enqueue_request([step("ledger_summary", path=str(ledger))])
    assert (await h.stub.Enqueue(request)).created
    ledger.unlink()
    retry = await h.stub.Enqueue(request)
    assert not retry.created and retry.run.snapshot.workflow_id == request.workflow_id


async def test_a_retry_with_an_invalid_field_still_gets_the_existing_run(harnesses: Harnesses) -> None:
    h = await harnesses.start()
    request = enqueue_request([step("test_noop")])
    assert (await h.stub.Enqueue(request)).created
    retry = ps.EnqueueRequest()
    retry.CopyFrom(request)
    retry.approved_by = "x" * 300
    answer = await h.stub.Enqueue(retry)
    assert not answer.created and answer.run.workflow_id == request.workflow_id
    fresh = enqueue_request([step("test_noop")], approved_by="x" * 300)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await h.stub.Enqueue(fresh)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "approved_by" in details(refused.value)["fields"]


async def test_enqueue_validates_and_stores_nothing_when_invalid(harnesses: Harnesses) -> None:
    h = await harnesses.start()
    with pytest.raises(grpc.aio.AioRpcError) as bad_id:
        await h.stub.Enqueue(enqueue_request([step("test_noop")], workflow_id="wf_nope"))
    assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    request = enqueue_request([step("no_such_procedure")])
    with pytest.raises(grpc.aio.AioRpcError) as bad_plan:
        await h.stub.Enqueue(request)
    assert bad_plan.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "plan[0].procedure" in details(bad_plan.value)["fields"]

    negative = enqueue_request([step("test_noop")], base_sequence=-1)
    with pytest.raises(grpc.aio.AioRpcError) as bad_base:
        await h.stub.Enqueue(negative)
    assert bad_base.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "base_sequence" in details(bad_base.value)["fields"]

    timeless = enqueue_request([step("test_noop")])
    timeless.approved_at.seconds = -(2**62)  # before any calendar's first year
    with pytest.raises(grpc.aio.AioRpcError) as bad_time:
        await h.stub.Enqueue(timeless)
    assert bad_time.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "approved_at" in details(bad_time.value)["fields"]

    for refused in (request, negative, timeless):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await h.stub.GetRun(ps.GetRunRequest(workflow_id=refused.workflow_id))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


# --- failures ------------------------------------------------------------------------------


async def test_cycle_error_is_a_warning_and_the_run_goes_on(
    harnesses: Harnesses, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="processor")
    h = await harnesses.start()
    counter = tmp_path / "fail-count"
    request = enqueue_request([step("test_fail", path=str(counter), failures=1), step("test_noop")])
    await h.stub.Enqueue(request)

    messages = await collect(h.stub, request.workflow_id)

    assert types(messages) == ["QUEUED", "STARTED", "CYCLE_FAILED", "CYCLE_COMPLETED", "CYCLE_COMPLETED", "COMPLETED"]
    assert_gap_free(messages, first=3)
    failed = events(messages)[2]
    assert failed.cycle == 1 and "planned failure 1" in failed.message
    assert [e.cycle for e in events(messages)[2:5]] == [1, 2, 3]
    assert result(messages[-1].snapshot)["steps"][0]["result"] == {"calls": 2.0}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "processor.scheduler"]
    assert any("planned failure 1" in r.getMessage() for r in warnings)


async def test_critical_error_fails_the_run_and_the_reason_is_persisted(
    harnesses: Harnesses, caplog: pytest.LogCaptureFixture
) -> None:
    h = await harnesses.start()
    request = enqueue_request([step("test_noop"), step("test_critical", message="ledger is corrupt")])
    await h.stub.Enqueue(request)

    messages = await collect(h.stub, request.workflow_id)

    assert types(messages) == ["QUEUED", "STARTED", "CYCLE_COMPLETED", "FAILED"]
    final = messages[-1].snapshot
    assert final.status == S.WORKFLOW_STATUS_FAILED and final.cycle == 2
    assert (final.error.reason, final.error.message) == (statuses.CRITICAL_ERROR, "ledger is corrupt")
    assert any(r.levelno == logging.ERROR and "ledger is corrupt" in r.getMessage() for r in caplog.records)
    # Persisted: another processor on the same database reports the same error.
    await harnesses.started[0].close()
    harnesses.started.clear()
    again = await harnesses.start()
    run = (await again.stub.GetRun(ps.GetRunRequest(workflow_id=request.workflow_id))).run
    assert run.snapshot.error.reason == statuses.CRITICAL_ERROR
    assert run_row(again.db_path, request.workflow_id)["lease_owner"] is None


async def test_too_many_consecutive_failures_fail_the_run(harnesses: Harnesses, tmp_path: Path) -> None:
    h = await harnesses.start(max_consecutive_failures=2)
    request = enqueue_request([step("test_fail", path=str(tmp_path / "count"), failures=9)])
    await h.stub.Enqueue(request)

    messages = await collect(h.stub, request.workflow_id)

    assert types(messages) == ["QUEUED", "STARTED", "CYCLE_FAILED", "CYCLE_FAILED", "FAILED"]
    assert messages[-1].snapshot.error.reason == statuses.TOO_MANY_FAILURES
    assert messages[-1].snapshot.cycle == 2


async def test_run_not_done_after_max_cycles_fails(harnesses: Harnesses) -> None:
    h = await harnesses.start()
    request = enqueue_request([step("test_noop")] * 3, max_cycles=2)
    await h.stub.Enqueue(request)

    messages = await collect(h.stub, request.workflow_id)

    assert types(messages) == ["QUEUED", "STARTED", "CYCLE_COMPLETED", "CYCLE_COMPLETED", "FAILED"]
    final = messages[-1].snapshot
    assert final.error.reason == statuses.MAX_CYCLES_EXCEEDED
    assert (final.cycle, final.max_cycles, final.progress.done) == (2, 2, 2)
    assert_gap_free(messages, first=3)


# --- cancel --------------------------------------------------------------------------------


async def test_cancel_is_honoured_between_cycles(harnesses: Harnesses) -> None:
    h = await harnesses.start()
    request = enqueue_request([step("test_sleep", seconds=0.1)] * 10)
    await h.stub.Enqueue(request)
    call = watch(h.stub, request.workflow_id)
    seen = await read_until(call, is_event(E.EVENT_TYPE_CYCLE_COMPLETED, cycle=1))

    cancel = ps.CancelRunRequest(workflow_id=request.workflow_id, requested_by="bob", reason="wrong ledger")
    response = await h.stub.CancelRun(cancel)
    assert response.run.cancel_requested
    seen += await drain(call)

    kinds = types(seen)
    assert kinds[-1] == "CANCELLED" and kinds.count("CANCEL_REQUESTED") == 1
    requested = next(e for e in events(seen) if e.type == E.EVENT_TYPE_CANCEL_REQUESTED)
    assert requested.actor == "bob" and "wrong ledger" in requested.message
    assert seen[-1].snapshot.status == S.WORKFLOW_STATUS_CANCELLED
    assert seen[-1].snapshot.cycle < 10
    assert_gap_free(seen, first=3)
    # Idempotent: a second cancel changes nothing.
    again = await h.stub.CancelRun(cancel)
    assert again.run.snapshot == seen[-1].snapshot


async def test_cancel_of_a_queued_run_is_immediate(harnesses: Harnesses, tmp_path: Path) -> None:
    h = await harnesses.start(max_concurrent=1)
    go = tmp_path / "go"
    busy = enqueue_request([step("test_wait_for_file", path=str(go))])  # (holds the one slot)
    await h.stub.Enqueue(busy)
    await read_until(watch(h.stub, busy.workflow_id), is_event(E.EVENT_TYPE_STARTED))
    waiting = enqueue_request([step("test_noop")])
    queued = await h.stub.Enqueue(waiting)
    assert queued.run.snapshot.status == S.WORKFLOW_STATUS_QUEUED

    response = await h.stub.CancelRun(ps.CancelRunRequest(workflow_id=waiting.workflow_id, requested_by="bob"))

    assert response.run.snapshot.status == S.WORKFLOW_STATUS_CANCELLED
    messages = await collect(h.stub, waiting.workflow_id)
    assert types(messages) == ["QUEUED", "CANCELLED"]
    assert events(messages)[-1].actor == "bob"
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await h.stub.CancelRun(ps.CancelRunRequest(workflow_id=new_id(), requested_by="bob"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    go.write_text("go")
    assert types(await collect(h.stub, busy.workflow_id))[-1] == "COMPLETED"


# --- concurrency ---------------------------------------------------------------------------


async def test_at_most_max_concurrent_runs_at_a_time(harnesses: Harnesses) -> None:
    h = await harnesses.start(max_concurrent=2)
    test_procedures.reset_peak()
    requests = [enqueue_request([step("test_sleep", seconds=0.05)] * 2) for _ in range(5)]
    for request in requests:
        await h.stub.Enqueue(request)

    results = await asyncio.gather(*(collect(h.stub, r.workflow_id) for r in requests))

    assert all(types(m)[-1] == "COMPLETED" for m in results)
    assert test_procedures.PEAK == 2


async def test_concurrent_enqueues_never_exceed_max_concurrent(harnesses: Harnesses) -> None:
    """Enqueue claims in its own transaction when a slot is free; racing the claim loop, it
    must still never take a slot twice."""
    h = await harnesses.start(max_concurrent=2)
    test_procedures.reset_peak()
    requests = [enqueue_request([step("test_sleep", seconds=0.05)]) for _ in range(8)]

    await asyncio.gather(*(h.stub.Enqueue(r) for r in requests))
    results = await asyncio.gather(*(collect(h.stub, r.workflow_id) for r in requests))

    assert all(types(m)[-1] == "COMPLETED" for m in results)
    assert test_procedures.PEAK == 2


async def test_enqueue_on_an_idle_processor_starts_the_run_before_answering(
    harnesses: Harnesses, tmp_path: Path
) -> None:
    h = await harnesses.start()
    go = tmp_path / "go"
    request = enqueue_request([step("test_wait_for_file", path=str(go))])  # (running until the file is there)

    response = await h.stub.Enqueue(request)
    run = await h.stub.GetRun(ps.GetRunRequest(workflow_id=request.workflow_id))

    assert response.created
    assert response.run.snapshot.status == S.WORKFLOW_STATUS_RUNNING  # claimed in the Enqueue's commit
    assert run.run.snapshot.status == S.WORKFLOW_STATUS_RUNNING
    go.write_text("go")
    assert types(await collect(h.stub, request.workflow_id))[-1] == "COMPLETED"


# --- watching ------------------------------------------------------------------------------


async def test_a_watcher_right_after_enqueue_is_served_from_memory(
    harnesses: Harnesses, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The gateway opens its watch as soon as Enqueue answers: the run's first events come
    from the hub, which keeps them while the run is driven, not from two database reads."""
    h = await harnesses.start()
    go = tmp_path / "go"
    request = enqueue_request([step("test_wait_for_file", path=str(go))], base_sequence=2)
    await h.stub.Enqueue(request)
    reads: list[object] = []  # of the run or its events (the claim loop's polls do not count)
    real_read = h.processor.db.read

    async def counted(fn: Callable[..., Any]) -> Any:
        if isinstance(fn, functools.partial) and fn.func in (store.get_run, store.events_after):
            reads.append(fn)
        return await real_read(fn)

    monkeypatch.setattr(h.processor.db, "read", counted)
    stream = watch(h.stub, request.workflow_id, after=2)
    first = [await stream.read(), await stream.read()]
    assert [m.event.type for m in first] == [E.EVENT_TYPE_QUEUED, E.EVENT_TYPE_STARTED]
    assert [m.event.sequence for m in first] == [3, 4]
    assert reads == []  # (the cycle is still running, until the file is there: its driver reads nothing yet)
    go.write_text("go")
    # The hub lets go of the run once it ends; a later watcher replays from the log.
    rest = []
    while (message := await stream.read()) != grpc.aio.EOF:
        rest.append(message)
    assert types(rest)[-1] == "COMPLETED"
    assert h.processor.hub.watched == 0
    replay = await collect(h.stub, request.workflow_id, after=2)
    assert [m.event for m in replay] == [m.event for m in first + rest if m.WhichOneof("kind") == "event"]
    assert reads


async def test_watch_replays_after_sequence_and_resumes_exactly(harnesses: Harnesses) -> None:
    h = await harnesses.start()
    request = enqueue_request([step("test_noop")] * 3, base_sequence=5)
    await h.stub.Enqueue(request)
    full = await collect(h.stub, request.workflow_id)
    sequences = [e.sequence for e in events(full)]
    assert sequences == list(range(6, 12))

    for after in (0, 5, 7, 10):
        replay = await collect(h.stub, request.workflow_id, after=after)
        assert [e.sequence for e in events(replay)] == [s for s in sequences if s > after]
        assert replay == [m for m in full if m.event.sequence > after]
    # After the terminal event there is nothing more to send: the stream ends at once.
    assert await collect(h.stub, request.workflow_id, after=11) == []


async def test_watch_follows_live_and_a_hundred_watchers_agree(harnesses: Harnesses) -> None:
    h = await harnesses.start(cycle_delay=0.02)
    request = enqueue_request([step("test_sleep", seconds=0.05)] * 4)
    await h.stub.Enqueue(request)

    streams = await asyncio.gather(*(collect(h.stub, request.workflow_id) for _ in range(100)))

    first = [m.event for m in streams[0]]
    assert types(streams[0]) == ["QUEUED", "STARTED"] + ["CYCLE_COMPLETED"] * 4 + ["COMPLETED"]
    assert_gap_free(streams[0], first=3)
    for stream in streams[1:]:
        assert [m.event for m in stream if m.WhichOneof("kind") == "event"] == first


async def test_watch_resumes_mid_run_with_the_missing_events(harnesses: Harnesses) -> None:
    h = await harnesses.start()
    request = enqueue_request([step("test_sleep", seconds=0.05)] * 4)
    await h.stub.Enqueue(request)
    call = watch(h.stub, request.workflow_id)
    seen = await read_until(call, is_event(E.EVENT_TYPE_CYCLE_COMPLETED, cycle=2))
    call.cancel()  # the client drops

    rest = await collect(h.stub, request.workflow_id, after=seen[-1].event.sequence)

    assert_gap_free(seen + rest, first=3)
    assert types(seen + rest)[-1] == "COMPLETED"


async def test_watch_sends_heartbeats_with_the_snapshot_while_idle(harnesses: Harnesses) -> None:
    h = await harnesses.start(heartbeat_interval=0.05)
    request = enqueue_request([step("test_sleep", seconds=0.4)])
    await h.stub.Enqueue(request)

    messages = await collect(h.stub, request.workflow_id)

    heartbeats = [m for m in messages if m.WhichOneof("kind") == "heartbeat"]
    assert heartbeats, "expected heartbeats during a 0.4 s cycle"
    assert all(hb.snapshot.status == S.WORKFLOW_STATUS_RUNNING for hb in heartbeats)
    assert all(hb.heartbeat.HasField("time") for hb in heartbeats)
    last_event = 0
    for message in messages:  # a heartbeat carries the snapshot as of the newest event
        if message.WhichOneof("kind") == "event":
            last_event = message.event.sequence
        else:
            assert message.snapshot.last_sequence == last_event
    assert messages[-1].WhichOneof("kind") == "event" and types(messages)[-1] == "COMPLETED"


async def test_watch_past_the_last_event_is_out_of_range(harnesses: Harnesses) -> None:
    """A stream that waits for sequences past the end would never see the terminal event."""
    h = await harnesses.start()
    request = enqueue_request([step("test_sleep", seconds=0.2)])
    await h.stub.Enqueue(request)
    call = h.stub.WatchStatus(ps.ProcessorServiceWatchStatusRequest(workflow_id=request.workflow_id, after_sequence=50))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call:
            pass
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "after_sequence" in details(refused.value)["fields"]


async def test_watch_of_unknown_or_malformed_run_fails(harnesses: Harnesses) -> None:
    h = await harnesses.start()
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await collect(h.stub, new_id())
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await collect(h.stub, "not-an-id")
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as get_unknown:
        await h.stub.GetRun(ps.GetRunRequest(workflow_id=new_id()))
    assert get_unknown.value.code() == grpc.StatusCode.NOT_FOUND


# --- hand-over -----------------------------------------------------------------------------


async def test_graceful_stop_releases_leases_and_another_processor_resumes(harnesses: Harnesses) -> None:
    first = await harnesses.start(lease_seconds=60.0)
    # (half a second a cycle: the stop must come before the run ends, on a busy machine too)
    request = enqueue_request([step("test_sleep", seconds=0.5)] * 5)
    await first.stub.Enqueue(request)
    seen = await read_until(watch(first.stub, request.workflow_id), is_event(E.EVENT_TYPE_CYCLE_COMPLETED, cycle=1))

    await first.close()
    row = run_row(first.db_path, request.workflow_id)
    assert row["lease_owner"] is None and row["lease_expires_at"] is None
    assert row["status"] == S.WORKFLOW_STATUS_RUNNING and row["cycle"] >= 1

    second = await harnesses.start()
    messages = await collect(second.stub, request.workflow_id)

    assert_gap_free(messages, first=3)
    assert events(messages)[: len(seen)] == events(seen)
    completed = [e.cycle for e in events(messages) if e.type == E.EVENT_TYPE_CYCLE_COMPLETED]
    assert completed == [1, 2, 3, 4, 5]
    resumed = [e for e in events(messages) if e.type == E.EVENT_TYPE_STARTED][1]
    assert resumed.message == f"resumed from checkpoint at cycle {row['cycle']}"
    # Taken over at once, not after the 60 s lease.
    assert resumed.time.ToDatetime() - events(seen)[-1].time.ToDatetime() < timedelta(seconds=30)
    assert len(result(messages[-1].snapshot)["steps"]) == 5


async def test_expired_lease_of_a_dead_processor_is_reclaimed(harnesses: Harnesses, tmp_path: Path) -> None:
    db_path = tmp_path / "processor.db"
    workflow_id = new_id()
    lease_end = _write_half_done_run(db_path, workflow_id, expires_in=0.3)

    h = await harnesses.start()
    messages = await collect(h.stub, workflow_id)

    assert types(messages) == ["QUEUED", "STARTED", "CYCLE_COMPLETED", "STARTED", "CYCLE_COMPLETED", "COMPLETED"]
    assert_gap_free(messages, first=1)
    resumed = events(messages)[3]
    assert resumed.message == "resumed from checkpoint at cycle 1"
    assert resumed.time.ToDatetime().replace(tzinfo=lease_end.tzinfo) >= lease_end  # not before it expired
    assert [e.cycle for e in events(messages)[4:]] == [2, 2]
    assert result(messages[-1].snapshot)["steps"][0]["result"] == {"from": "dead processor"}
    assert run_row(db_path, workflow_id)["lease_owner"] is None


async def test_a_restart_with_the_same_worker_id_resumes_its_runs_at_once(harnesses: Harnesses, tmp_path: Path) -> None:
    workflow_id = new_id()
    _write_half_done_run(tmp_path / "processor.db", workflow_id, expires_in=3600, owner="proc-a")

    h = await harnesses.start(worker_id="proc-a")
    messages = await asyncio.wait_for(collect(h.stub, workflow_id), 10)

    assert types(messages)[3:] == ["STARTED", "CYCLE_COMPLETED", "COMPLETED"]


async def test_a_slow_cycle_keeps_its_lease(harnesses: Harnesses) -> None:
    """A cycle three times longer than the lease is not taken over by another processor. (A
    lease of 2 s, renewed every 0.67 s: at 0.5 s, a stall of a third of a second on a busy
    machine would have let the rival in, and the test would fail for the machine, not the
    lease.)"""
    owner = await harnesses.start(lease_seconds=2.0, worker_id="owner")
    request = enqueue_request([step("test_sleep", seconds=6.0)])
    await owner.stub.Enqueue(request)
    await read_until(watch(owner.stub, request.workflow_id), is_event(E.EVENT_TYPE_STARTED))
    await harnesses.start(lease_seconds=2.0, worker_id="rival", poll_interval=0.02)

    messages = await collect(owner.stub, request.workflow_id)

    assert types(messages) == ["QUEUED", "STARTED", "CYCLE_COMPLETED", "COMPLETED"]
    assert "owner" in events(messages)[1].message


PAUSE_LEASE = 1.0  # seconds: the lease of the processor paused below


async def test_a_pause_right_after_a_claim_counts_against_the_lease(
    harnesses: Harnesses, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A processor stopped between its claim's commit and the run's first step (here: its
    event loop blocked past the lease) while another processor took the run over starts no
    step when it resumes: the lease is timed from before the claim, not from the resumption."""
    request = enqueue_request([step("test_journal", journal=str(tmp_path / "journal.txt"), step=1)])
    original = Claimer._started

    def paused(self: Claimer, claimed: list[store.Appended], *args: Any, **kwargs: Any) -> None:
        if any(c.run.workflow_id == request.workflow_id for c in claimed):
            _pause_while_another_takes_over(tmp_path / "processor.db", request.workflow_id)
        original(self, claimed, *args, **kwargs)

    monkeypatch.setattr(Claimer, "_started", paused)
    await _assert_no_step_after_the_pause(harnesses, request, tmp_path)


async def test_a_pause_before_a_step_starts_on_its_thread_counts_against_the_lease(
    harnesses: Harnesses, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease is checked again on the cycle's thread, right before the step starts: a pause
    after the check on the event loop (here: the loop blocked past the lease) while another
    processor took the run over starts no step."""
    request = enqueue_request([step("test_journal", journal=str(tmp_path / "journal.txt"), step=1)])
    original = LeaseKeeper.holds
    pauses = [request.workflow_id]

    async def holds_then_pauses(self: LeaseKeeper) -> bool:
        holds = await original(self)
        if holds and self.workflow_id in pauses:
            pauses.remove(self.workflow_id)
            _pause_while_another_takes_over(tmp_path / "processor.db", self.workflow_id)
        return holds

    monkeypatch.setattr(LeaseKeeper, "holds", holds_then_pauses)
    await _assert_no_step_after_the_pause(harnesses, request, tmp_path)


def _pause_while_another_takes_over(db_path: Path, workflow_id: str) -> None:
    """Block this process's event loop (as a SIGSTOP would) until the lease expired, then claim
    the run as another processor would (epoch 2, for a minute)."""
    time.sleep(PAUSE_LEASE * 1.2)
    engine = create_engine(f"sqlite:///{db_path}")
    try:
        now = utcnow()
        with engine.begin() as conn:
            (run,) = store.claim(conn, owner="other", now=now, expires_at=now + timedelta(seconds=60), limit=1)
    finally:
        engine.dispose()
    assert run.workflow_id == workflow_id and run.lease == store.Lease("other", 2)


async def _assert_no_step_after_the_pause(harnesses: Harnesses, request: ps.EnqueueRequest, tmp_path: Path) -> None:
    (tmp_path / "journal.txt").touch()
    h = await harnesses.start(lease_seconds=PAUSE_LEASE, worker_id="paused")
    await h.stub.Enqueue(request)
    deadline = time.monotonic() + 30
    while request.workflow_id in h.processor.scheduler.active:  # it lets the run go
        assert time.monotonic() < deadline, "the paused processor still drives the run"
        await asyncio.sleep(0.05)

    assert (tmp_path / "journal.txt").read_text() == ""  # no step started, under any epoch
    row = run_row(tmp_path / "processor.db", request.workflow_id)
    assert (row["lease_owner"], row["lease_epoch"], row["cycle"]) == ("other", 2, 0)


def _write_half_done_run(
    db_path: Path,
    workflow_id: str,
    expires_in: float,
    owner: str = "dead-processor",
    *,
    epoch: int = 1,
    second_step: str = "test_noop",
) -> datetime:
    """A RUNNING run checkpointed after cycle 1 whose owner died holding a lease (of `epoch`)."""
    engine = create_engine(f"sqlite:///{db_path}")
    migrations.upgrade(engine, "processor:migrations")  # the schema a processor leaves behind
    now = utcnow()
    lease_end = now + timedelta(seconds=expires_in)
    plan = [{"procedure": "test_noop", "parameters": {}}, {"procedure": second_step, "parameters": {}}]
    with engine.begin() as conn:
        run = store.insert_run(
            conn,
            workflow_id=workflow_id,
            title="half done",
            plan=plan,
            orchestrator="plan",
            max_cycles=5,
            base_sequence=0,
            base_hash=None,
            queued_message="queued",
            now=now,
        ).run
        started = store.NewEvent.following(run, E.EVENT_TYPE_STARTED, "started", status=S.WORKFLOW_STATUS_RUNNING)
        cycle = store.NewEvent.following(
            run,
            E.EVENT_TYPE_CYCLE_COMPLETED,
            "step 1/2 test_noop done",
            status=S.WORKFLOW_STATUS_RUNNING,
            cycle=1,
            progress_done=1,
        )
        state = '{"next_step": 1, "results": [{"from": "dead processor"}]}'
        changes = {"state_json": state, "lease_owner": owner, "lease_expires_at": lease_end, "lease_epoch": epoch}
        store.append(conn, run, [started, cycle], changes, now)
    engine.dispose()
    return lease_end


def test_append_refuses_a_change_that_is_not_a_column(tmp_path: Path) -> None:
    """The UPDATE is built once and takes its SET from the parameters: a misspelt column would
    otherwise be dropped without a word."""
    engine = create_engine(f"sqlite:///{tmp_path / 'processor.db'}")
    migrations.upgrade(engine, "processor:migrations")
    workflow_id = new_id()
    with engine.begin() as conn:
        run = store.insert_run(
            conn,
            workflow_id=workflow_id,
            title="t",
            plan=[{"procedure": "test_noop", "parameters": {}}],
            orchestrator="plan",
            max_cycles=5,
            base_sequence=0,
            base_hash=None,
            queued_message="queued",
            now=utcnow(),
        ).run
    started = store.NewEvent.following(run, E.EVENT_TYPE_STARTED, "started", status=S.WORKFLOW_STATUS_RUNNING)
    with pytest.raises(ValueError, match="leaseowner"), engine.begin() as conn:
        store.append(conn, run, [started], {"leaseowner": "me"}, utcnow())
    with engine.begin() as conn:
        assert store.get_run(conn, workflow_id) == run  # nothing was written
    engine.dispose()


def test_every_claim_raises_the_lease_epoch_and_a_stale_lease_cannot_commit_or_renew(tmp_path: Path) -> None:
    """The epoch is the fencing token: a lease taken again, even under the same worker id (a
    processor restarted with a stable --worker-id), is not the lease before it."""
    engine = create_engine(f"sqlite:///{tmp_path / 'processor.db'}")
    migrations.upgrade(engine, "processor:migrations")
    workflow_id, now = new_id(), utcnow()
    with engine.begin() as conn:
        store.insert_run(
            conn,
            workflow_id=workflow_id,
            title="t",
            plan=[{"procedure": "test_noop", "parameters": {}}],
            orchestrator="plan",
            max_cycles=5,
            base_sequence=0,
            base_hash=None,
            queued_message="queued",
            now=now,
        )

    def claim(at: datetime) -> store.RunRecord:
        with engine.begin() as conn:
            (run,) = store.claim(conn, owner="w1", now=at, expires_at=at + timedelta(seconds=1), limit=1)
        return run

    first = claim(now)
    assert first.lease == store.Lease("w1", 1)
    second = claim(now + timedelta(seconds=2))  # the first lease expired; the same worker id claims again
    assert second.lease == store.Lease("w1", 2)
    with engine.begin() as conn:
        assert store.lock_run(conn, workflow_id, lease=first.lease) is None
        assert not store.renew_lease(conn, workflow_id, first.lease, now + timedelta(seconds=9))
        assert store.renew_lease(conn, workflow_id, second.lease, now + timedelta(seconds=9))
        locked = store.lock_run(conn, workflow_id, lease=second.lease)
    assert locked is not None and locked.lease_expires_at == now + timedelta(seconds=9)
    engine.dispose()


async def test_a_procedure_sees_its_run_and_the_epoch_of_the_lease_it_runs_under(
    harnesses: Harnesses, tmp_path: Path
) -> None:
    """A run resumed from a dead processor's lease (epoch 3) runs under the next epoch."""
    db_path = tmp_path / "processor.db"
    workflow_id = new_id()
    _write_half_done_run(db_path, workflow_id, expires_in=-1, epoch=3, second_step="test_context")

    h = await harnesses.start()
    messages = await collect(h.stub, workflow_id)

    assert types(messages)[-1] == "COMPLETED"
    context = result(messages[-1].snapshot)["steps"][1]["result"]
    assert context == {"workflow_id": workflow_id, "cycle": 2, "step": 2, "lease_epoch": 4}
    assert run_row(db_path, workflow_id)["lease_epoch"] == 4


# --- as a process ----------------------------------------------------------------------------


async def test_runs_as_a_subprocess_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "processor",
        "--port",
        "0",
        "--database-url",
        f"sqlite:///{tmp_path / 'p.db'}",
        "--plugin",
        "tests.support.procedures",
        "--cycle-delay",
        "0.01",
        *auth.processor_args(),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        port = await asyncio.wait_for(_bound_port(proc.stderr), 30)
        drain_log = asyncio.create_task(proc.stderr.read())  # so the server never blocks on a full pipe
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=auth.gateway_link()) as channel:
            stub = ps_grpc.ProcessorServiceStub(channel)
            request = enqueue_request([step("test_noop")])
            await stub.Enqueue(request)
            assert types(await collect(stub, request.workflow_id))[-1] == "COMPLETED"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert "released 0 leases" in (await drain_log).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _bound_port(stderr: asyncio.StreamReader) -> int:
    while line := await stderr.readline():
        found = re.search(r"processor listening on [\d.]+:(\d+)", line.decode())
        if found:
            return int(found.group(1))
    raise AssertionError("the processor exited without logging its port")


async def test_sigterm_does_not_wait_past_the_grace_period_for_a_running_step(tmp_path: Path) -> None:
    """A step still running on a thread after the grace period keeps its lease (nobody else
    starts it meanwhile) and the process exits instead of waiting for the thread."""
    database = tmp_path / "p.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "processor",
        "--port",
        "0",
        "--database-url",
        f"sqlite:///{database}",
        "--plugin",
        "tests.support.procedures",
        "--grace-period",
        "0.5",
        *auth.processor_args(),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        port = await asyncio.wait_for(_bound_port(proc.stderr), 30)
        drain_log = asyncio.create_task(proc.stderr.read())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=auth.gateway_link()) as channel:
            stub = ps_grpc.ProcessorServiceStub(channel)
            request = enqueue_request([step("test_sleep", seconds=30)])
            await stub.Enqueue(request)
            call = stub.WatchStatus(ps.ProcessorServiceWatchStatusRequest(workflow_id=request.workflow_id))
            await read_until(call, is_event(E.EVENT_TYPE_STARTED))
            call.cancel()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0  # not the 30 s of the step
        assert "cycles still running on threads" in (await drain_log).decode()
        assert run_row(database, request.workflow_id)["lease_owner"] is not None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- the feed ---------------------------------------------------------------------------------


async def test_follow_streams_every_event_of_every_run_in_order(harnesses: Harnesses) -> None:
    h = await harnesses.start(max_concurrent=2)
    follow = h.stub.Follow(ps.FollowRequest())
    subscribed = await follow.read()
    assert subscribed.HasField("heartbeat")  # from here on, every commit is on this stream
    requests = [enqueue_request([step("test_noop")] * 3) for _ in range(2)]
    for request in requests:
        await h.stub.Enqueue(request)
    seen: dict[str, list[tuple[int, str]]] = {r.workflow_id: [] for r in requests}
    while any(not kinds or kinds[-1][1] != "COMPLETED" for kinds in seen.values()):
        message = await asyncio.wait_for(follow.read(), 30)
        if message.HasField("event"):
            event = message.event.event
            seen[event.workflow_id].append((event.sequence, E.Name(event.type).removeprefix("EVENT_TYPE_")))
            assert message.event.snapshot.last_sequence == event.sequence
    follow.cancel()
    for kinds in seen.values():
        assert [s for s, _ in kinds] == list(range(3, 3 + len(kinds)))
        assert [k for _, k in kinds] == ["QUEUED", "STARTED", *["CYCLE_COMPLETED"] * 3, "COMPLETED"]


async def test_read_events_pages_through_cursors(harnesses: Harnesses) -> None:
    h = await harnesses.start()
    runs = [enqueue_request([step("test_noop")] * 2) for _ in range(3)]
    for request in runs:
        await h.stub.Enqueue(request)
        await collect(h.stub, request.workflow_id)
    cursors = [ps.FeedCursor(workflow_id=r.workflow_id, after_sequence=2) for r in runs]
    whole = await h.stub.ReadEvents(ps.ReadEventsRequest(cursors=cursors))
    assert not whole.truncated and len(whole.events) == 3 * 5  # QUEUED, STARTED, 2 cycles, COMPLETED each
    assert [e.event.workflow_id for e in whole.events] == [r.workflow_id for r in runs for _ in range(5)]
    page = await h.stub.ReadEvents(ps.ReadEventsRequest(cursors=cursors, page_size=7))
    assert page.truncated and [e.event.sequence for e in page.events] == [3, 4, 5, 6, 7, 3, 4]
    later = [ps.FeedCursor(workflow_id=runs[0].workflow_id, after_sequence=6)]
    assert [e.event.sequence for e in (await h.stub.ReadEvents(ps.ReadEventsRequest(cursors=later))).events] == [7]
    for bad in (
        ps.ReadEventsRequest(cursors=[ps.FeedCursor(workflow_id="nope")]),
        ps.ReadEventsRequest(cursors=[ps.FeedCursor(workflow_id=runs[0].workflow_id, after_sequence=-1)]),
        ps.ReadEventsRequest(cursors=cursors * 400),
        ps.ReadEventsRequest(cursors=cursors, page_size=5000),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await h.stub.ReadEvents(bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_on_a_shared_database_each_processor_feeds_every_run(tmp_path: Path) -> None:
    """Two processors on one PostgreSQL database: a run driven by one is on the other's feed
    too (its tail reads what others commit), and a watcher there follows it to the end."""
    harnesses = Harnesses(tmp_path)
    with fresh_database("shared") as url:
        try:
            driver = await harnesses.start(database_url=url, worker_id="driver")
            follower = await harnesses.start(database_url=url, worker_id="follower", max_concurrent=1)
            follow = follower.stub.Follow(ps.FollowRequest())
            await follow.read()
            request = enqueue_request([step("test_noop")] * 2)
            await driver.stub.Enqueue(request)
            kinds: list[str] = []
            while not kinds or kinds[-1] != "COMPLETED":
                message = await asyncio.wait_for(follow.read(), 30)
                if message.HasField("event") and message.event.event.workflow_id == request.workflow_id:
                    kinds.append(E.Name(message.event.event.type).removeprefix("EVENT_TYPE_"))
            follow.cancel()
            assert kinds == ["QUEUED", "STARTED", "CYCLE_COMPLETED", "CYCLE_COMPLETED", "COMPLETED"]
            watched = await collect(follower.stub, request.workflow_id)
            assert types(watched)[-1] == "COMPLETED"
        finally:
            await harnesses.close()

"""LISTEN/NOTIFY between processors on one PostgreSQL database. Polling is set to an hour
here, so whatever reaches the other processor can only have come by a notification."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from auditflow import migrations
from auditflow.convert import utcnow
from auditflow.v1 import processor_service_pb2 as ps
from auditflow.v1 import workflow_pb2 as pb
from processor import notify, store, transitions
from tests.support.postgres import fresh_database
from tests.support.processor_harness import Harness, Harnesses, collect, enqueue_request, new_id, step

HOUR = 3600.0


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[Harness, Harness]]:
    harnesses = Harnesses(tmp_path)
    with fresh_database("notify") as url:
        first = await harnesses.start(database_url=url, poll_interval=HOUR, max_concurrent=1, worker_id="first")
        second = await harnesses.start(database_url=url, poll_interval=HOUR, max_concurrent=1, worker_id="second")
        for harness in (first, second):
            listener = harness.processor.listener
            assert listener is not None and await asyncio.to_thread(listener.listening.wait, 30)
        try:
            yield first, second
        finally:
            await harnesses.close()


async def test_events_committed_by_one_processor_reach_watchers_on_the_other(
    two: tuple[Harness, Harness], caplog: pytest.LogCaptureFixture
) -> None:
    setup = [r.getMessage() for r in caplog.get_records("setup")]
    assert sum("LISTEN/NOTIFY active" in m for m in setup) == 2, setup  # the log says which mode is active
    driver, other = two
    request = enqueue_request([step("test_sleep", seconds=0.01) for _ in range(5)])
    answer = await driver.stub.Enqueue(request)  # an idle processor claims in its own commit
    assert answer.run.snapshot.status == pb.WORKFLOW_STATUS_RUNNING
    messages = await collect(other.stub, request.workflow_id, timeout=60)
    events = [m.event for m in messages if m.HasField("event")]
    assert events[-1].type == pb.EVENT_TYPE_COMPLETED
    assert [e.sequence for e in events] == list(range(3, 3 + len(events)))  # after base_sequence 2


async def test_a_run_queued_at_a_busy_processor_wakes_the_idle_one(two: tuple[Harness, Harness]) -> None:
    busy, idle = two
    long_run = enqueue_request([step("test_sleep", seconds=0.5) for _ in range(20)])
    assert (await busy.stub.Enqueue(long_run)).run.snapshot.status == pb.WORKFLOW_STATUS_RUNNING  # its one slot taken
    queued = enqueue_request([step("test_noop")])
    assert (await busy.stub.Enqueue(queued)).run.snapshot.status == pb.WORKFLOW_STATUS_QUEUED
    messages = await collect(idle.stub, queued.workflow_id, timeout=60)
    events = [m.event for m in messages if m.HasField("event")]
    assert events[-1].type == pb.EVENT_TYPE_COMPLETED
    run = await idle.stub.GetRun(ps.GetRunRequest(workflow_id=queued.workflow_id))
    started = next(e.message for e in events if e.type == pb.EVENT_TYPE_STARTED)
    assert "second" in started, run  # the idle one ran it
    await busy.stub.CancelRun(
        ps.CancelRunRequest(workflow_id=long_run.workflow_id, requested_by="alice", reason="done")
    )


async def test_only_a_run_left_queued_is_announced_to_other_processors(two: tuple[Harness, Harness]) -> None:
    """A run claimed in the transaction that inserts it is no other processor's business: its
    commit notifies its events only. A run left queued (no free slot) notifies the others too."""
    busy, _idle = two
    url = make_url(busy.processor.settings.database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as listener:
        listener.execute(f"LISTEN {notify.CHANNEL}")
        claimed = enqueue_request([step("test_sleep", seconds=0.5) for _ in range(20)])
        assert (await busy.stub.Enqueue(claimed)).run.snapshot.status == pb.WORKFLOW_STATUS_RUNNING
        heard_claimed = await asyncio.to_thread(_heard_until_marker, listener)
        queued = enqueue_request([step("test_noop")])
        assert (await busy.stub.Enqueue(queued)).run.snapshot.status == pb.WORKFLOW_STATUS_QUEUED
        heard_queued = await asyncio.to_thread(_heard_until_marker, listener)
    assert set(heard_claimed) == {notify.EVENTS}, heard_claimed  # QUEUED and STARTED, claimed in one commit
    assert notify.RUNS in heard_queued, heard_queued
    await busy.stub.CancelRun(ps.CancelRunRequest(workflow_id=claimed.workflow_id, requested_by="alice", reason="done"))


def _heard_until_marker(listener: psycopg.Connection[Any]) -> list[str]:
    """The payloads heard so far: a marker sent now comes after every earlier commit's."""
    listener.execute("SELECT pg_notify(%s, 'marker')", (notify.CHANNEL,))
    heard = []
    for note in listener.notifies(timeout=30):
        if note.payload == "marker":
            return heard
        heard.append(note.payload)
    raise AssertionError(f"the marker never came back; heard {heard}")


async def test_a_processor_is_not_woken_by_its_own_commits(two: tuple[Harness, Harness]) -> None:
    """What a processor commits it knows already: its own notifications wake neither its claim
    loop nor its tail (a read of every run written lately), another processor's do."""
    driver, _other = two
    tail = driver.processor.tail
    before = tail.reads
    request = enqueue_request([step("test_noop") for _ in range(10)], max_cycles=20)
    await driver.stub.Enqueue(request)
    events = [m.event for m in await collect(driver.stub, request.workflow_id, timeout=60) if m.HasField("event")]
    assert events[-1].type == pb.EVENT_TYPE_COMPLETED
    # A notification from another session (as another processor's commit sends): notifications
    # are heard in order, so once this one has woken the tail, every earlier one has been heard.
    url = driver.processor.settings.database_url
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_notify(:channel, 'events')"), {"channel": notify.CHANNEL})
        deadline = asyncio.get_running_loop().time() + 30
        while tail.reads <= before:
            assert asyncio.get_running_loop().time() < deadline, "the other session's notification never arrived"
            await asyncio.sleep(0.01)
        woken = tail.reads - before
    finally:
        engine.dispose()
    assert woken <= 2, f"the tail read {woken} times for one run of 12 commits here and one notification from elsewhere"


def test_one_notification_per_payload_and_transaction() -> None:
    """A group commit of many appends sends one notification of each kind, not one each."""
    with fresh_database("notifyonce") as url:
        engine = create_engine(url)
        try:
            migrations.upgrade(engine, "processor:migrations")
            sent: list[str] = []

            def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
                if "pg_notify" in statement:
                    sent.append(statement)

            event.listen(engine, "before_cursor_execute", count)
            with engine.begin() as conn:
                for _ in range(3):
                    store.insert_run(
                        conn,
                        workflow_id=new_id(),
                        title="t",
                        plan=[{"procedure": "test_noop", "parameters": {}}],
                        orchestrator="plan",
                        max_cycles=5,
                        base_sequence=0,
                        base_hash=None,
                        queued_message="queued",
                        now=utcnow(),
                    )
                    store.announce_queued(conn)
            assert len(sent) == 2, sent  # runs, and events
            with engine.begin() as conn:
                store.release_leases(conn, "nobody")  # (releases nothing: no notification)
            with engine.begin() as conn:
                (run,) = store.claim(conn, owner="w", now=utcnow(), expires_at=utcnow(), limit=1)
                store.append(conn, run, *transitions.started(run, "w"), utcnow())
            assert len(sent) == 3, sent  # a new transaction: its events notified again
        finally:
            engine.dispose()

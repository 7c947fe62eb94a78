"""The processor's application layer (`processor.runs.Runs`) on its own: records in, records
out, no gRPC server or channel. A real SQLite database and a real scheduler drive the runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from auditflow import procedures, statuses
from auditflow.db import Database
from auditflow.errors import InvalidArgument, NotFound, OutOfRange
from auditflow.v1 import workflow_pb2 as pb
from processor import messages, orchestrator, store
from processor.broadcast import EventBroadcast
from processor.runs import NewRun, Runs
from processor.scheduler import Scheduler
from processor.settings import Settings
from processor.store import EventCursor


@pytest.fixture
async def runs(tmp_path: Path) -> AsyncIterator[Runs]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'processor.db'}",
        plugins=("tests.support.procedures",),
        cycle_delay=0.01,
        heartbeat_interval=0.05,
        worker_id="unit",
    )
    procedures.load(settings.plugins)
    db = Database(settings.database_url, store.metadata, migrations="processor:migrations", name="processor")
    await asyncio.to_thread(db.start)
    await asyncio.to_thread(orchestrator.load, orchestrator.DEFAULT)
    hub: messages.Broadcast = EventBroadcast()
    scheduler = Scheduler(db, hub, settings)
    app = Runs(db, hub, scheduler, settings, None)
    yield app
    app.close()
    await scheduler.stop(5.0)
    await asyncio.to_thread(db.close)


def new_run(workflow_id: str, steps: int = 2) -> NewRun:
    return NewRun(
        workflow_id=workflow_id,
        title="unit",
        plan=[{"procedure": "test_noop", "parameters": {}}] * steps,
        orchestrator=orchestrator.DEFAULT,
        max_cycles=10,
        base_sequence=2,
        base_hash=None,
        approved_by="alice",
        approved_at=None,
        trace_context=None,
    )


async def test_a_run_is_enqueued_driven_to_its_end_and_read_back(runs: Runs) -> None:
    inserted = await runs.enqueue(new_run("wf-unit-1"), None)
    assert inserted.created and inserted.run.workflow_id == "wf-unit-1"
    watched = [message async for message in runs.watch("wf-unit-1", 0)]
    assert watched[-1].snapshot.status == pb.WORKFLOW_STATUS_COMPLETED
    run = await runs.get("wf-unit-1")
    assert statuses.is_terminal(run.status) and run.last_sequence == watched[-1].event.sequence
    events, truncated = await runs.read_events([EventCursor("wf-unit-1", 0)], 1000)
    assert [e.sequence for e in events] == list(range(3, run.last_sequence + 1)) and not truncated
    with pytest.raises(OutOfRange):
        await anext(runs.watch("wf-unit-1", run.last_sequence + 1))


async def test_a_retried_enqueue_returns_the_run_even_when_it_would_now_be_refused(runs: Runs) -> None:
    first = await runs.enqueue(new_run("wf-unit-2"), None)
    again = await runs.enqueue(new_run("wf-unit-2"), InvalidArgument("plan: a file moved"))
    assert not again.created and again.run.workflow_id == first.run.workflow_id
    with pytest.raises(InvalidArgument, match="a file moved"):
        await runs.enqueue(new_run("wf-unit-3"), InvalidArgument("plan: a file moved"))
    with pytest.raises(NotFound):
        await runs.get("wf-unit-3")  # nothing stored for the refused one


async def test_unknown_runs_are_not_found(runs: Runs) -> None:
    with pytest.raises(NotFound, match="wf-nowhere"):
        await runs.get("wf-nowhere")
    with pytest.raises(NotFound):
        await runs.cancel("wf-nowhere", "alice", "token:alice", "no longer needed")


async def test_follow_says_it_is_subscribed_then_beats_while_nothing_happens(runs: Runs) -> None:
    stream = runs.follow()
    assert await anext(stream) is None  # subscribed
    assert await anext(stream) is None  # a heartbeat interval without events
    await stream.aclose()

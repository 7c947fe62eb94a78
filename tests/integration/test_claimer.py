"""The claimer on its own, on a real SQLite database with no driver behind it: it takes the
oldest claimable runs for exactly the free slots, hands each to `drive` with the clock read
before the claim's write, leaves the rest queued for a slot that frees, and takes nothing
once the processor stops."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from auditflow.convert import utcnow
from auditflow.db import Database
from auditflow.v1 import workflow_pb2 as pb
from processor import store
from processor.broadcast import EventBroadcast
from processor.claimer import Claimer
from processor.settings import Settings
from processor.store import Inserted, RunRecord
from tests.support import auth
from tests.support.processor_harness import new_id

SLOTS = 2


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(
        f"sqlite:///{tmp_path / 'processor.db'}", store.metadata, migrations="processor:migrations", name="processor"
    )
    await asyncio.to_thread(database.start)
    yield database
    await asyncio.to_thread(database.close)


class Drivers:
    """Stands in for the scheduler: the runs handed over to be driven, with their clocks."""

    def __init__(self) -> None:
        self.leased_at: dict[str, float] = {}
        self._handed = asyncio.Event()

    def drive(self, run: RunRecord, leased_at: float) -> None:
        assert run.lease == store.Lease("w1", 1) and run.status == pb.WORKFLOW_STATUS_RUNNING
        self.leased_at[run.workflow_id] = leased_at
        self._handed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` holds, looking again after each run handed over."""
        while not condition():
            self._handed.clear()
            await asyncio.wait_for(self._handed.wait(), 30)


def claimer_for(db: Database, drivers: Drivers, stopping: asyncio.Event) -> Claimer:
    settings = Settings(
        **auth.processor_settings(),
        database_url="sqlite://",
        max_concurrent=SLOTS,
        worker_id="w1",
        lease_seconds=60,
        poll_interval=0.05,
    )
    return Claimer(
        db, EventBroadcast(), settings, driving=drivers.leased_at.keys, drive=drivers.drive, stopping=stopping
    )


def insert(workflow_id: str, age: float) -> Callable[..., Inserted]:
    return functools.partial(
        store.insert_run,
        workflow_id=workflow_id,
        title="t",
        plan=[{"procedure": "test_noop", "parameters": {}}],
        orchestrator="plan",
        max_cycles=5,
        base_sequence=0,
        base_hash=None,
        queued_message="queued",
        now=utcnow() - timedelta(seconds=age),
    )


async def test_the_oldest_runs_fill_the_free_slots_and_the_rest_wait_for_one(db: Database) -> None:
    ids = [new_id() for _ in range(SLOTS + 1)]
    for age, wid in zip((30, 20, 10), ids, strict=True):
        await db.write(insert(wid, age))
    drivers, stopping = Drivers(), asyncio.Event()
    claimer = claimer_for(db, drivers, stopping)
    before = time.monotonic()
    loop = asyncio.create_task(claimer.loop())
    await drivers.until(lambda: len(drivers.leased_at) == SLOTS)
    assert sorted(drivers.leased_at) == sorted(ids[:SLOTS]) and claimer.free() == 0
    assert all(before <= at <= time.monotonic() for at in drivers.leased_at.values())
    waiting = await db.read(functools.partial(store.get_run, workflow_id=ids[-1]))
    assert waiting is not None and (waiting.status, waiting.lease) == (pb.WORKFLOW_STATUS_QUEUED, None)

    del drivers.leased_at[ids[0]]  # a run ended: its slot is free
    claimer.wakeup.set()
    await drivers.until(lambda: ids[-1] in drivers.leased_at)

    stopping.set()
    claimer.wakeup.set()
    await asyncio.wait_for(loop, 30)
    assert claimer.free() == 0


async def test_a_run_enqueued_with_no_free_slot_is_stored_queued_and_not_driven(db: Database) -> None:
    drivers, stopping = Drivers(), asyncio.Event()
    claimer = claimer_for(db, drivers, stopping)
    first, second = new_id(), new_id()
    assert (await claimer.admit(insert(first, 0))).run.status == pb.WORKFLOW_STATUS_RUNNING  # claimed in its insert
    stopping.set()  # (no slot free from now on)
    queued = await claimer.admit(insert(second, 0))
    assert (queued.created, queued.run.status, queued.run.lease) == (True, pb.WORKFLOW_STATUS_QUEUED, None)
    assert [e.type for e in queued.events] == [pb.EVENT_TYPE_QUEUED]
    assert list(drivers.leased_at) == [first]
    again = await claimer.admit(insert(second, 0))
    assert (again.created, again.events, again.run) == (False, [], queued.run)  # idempotent

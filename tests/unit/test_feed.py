"""The feed publishes what it applies together as one batch, and applies together the events
the processor published together: each workflow's watchers, and the hub's listeners, are
woken once for them. With a processor on a real port and the gateway's database."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from auditflow.auth.client import bearer_interceptors
from auditflow.db import Database
from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import processor_service_pb2_grpc as ppb_grpc
from auditflow.v1 import workflow_pb2 as pb
from gateway import store
from gateway.feed import Feed
from gateway.hub import Item, WorkflowHub

WF = "wf_" + "0" * 32
RUNS = [f"wf_{n:032x}" for n in range(1, 6)]
LINK_DELAY = 0.02
RUNNING = pb.WORKFLOW_STATUS_RUNNING


def feed_event(sequence: int, workflow_id: str = WF) -> ppb.FeedEvent:
    return ppb.FeedEvent(
        event=pb.WorkflowEvent(workflow_id=workflow_id, sequence=sequence, status=RUNNING),
        snapshot=pb.StatusSnapshot(workflow_id=workflow_id, status=RUNNING, last_sequence=sequence),
    )


def under_way(hub: WorkflowHub, workflow_id: str) -> None:
    """The hub has seen the run start (its event 1): the feed's catch-up asks for the rest."""
    first = feed_event(1, workflow_id)
    hub.publish(Item.event(first.event, first.snapshot))


class Processor(ppb_grpc.ProcessorServiceServicer):
    """Subscribes the feed; its log has events 1 to 4 of WF; on the stream, RUNS' events 2
    and 3, each pair published together, its second message delayed on the way."""

    async def Follow(self, request: ppb.FollowRequest, context: Any) -> AsyncIterator[ppb.FollowResponse]:
        yield ppb.FollowResponse(heartbeat=pb.Heartbeat())
        for workflow_id in RUNS:
            yield ppb.FollowResponse(event=feed_event(2, workflow_id), more=True)
            await asyncio.sleep(LINK_DELAY)  # (a slow link: the second of a pair comes later)
            yield ppb.FollowResponse(event=feed_event(3, workflow_id))
        await asyncio.Event().wait()

    async def ReadEvents(self, request: ppb.ReadEventsRequest, context: Any) -> ppb.ReadEventsResponse:
        after = {c.workflow_id: c.after_sequence for c in request.cursors}.get(WF, 4)
        return ppb.ReadEventsResponse(events=[feed_event(s) for s in range(after + 1, 5)])


class Listener:
    """Told of each workflow at each publish; `settled` once every run is at `last`."""

    def __init__(self, hub: WorkflowHub, runs: list[str], last: int) -> None:
        self.told: list[str] = []
        self.settled = asyncio.Event()
        self._hub, self._runs, self._last = hub, runs, last

    def changed(self, workflow_id: str) -> None:
        self.told.append(workflow_id)
        if all(self._hub.published(w) == self._last for w in self._runs):
            self.settled.set()


@contextlib.asynccontextmanager
async def following(tmp_path: Path, hub: WorkflowHub) -> AsyncIterator[Feed]:
    """A feed of `hub` from the fake processor, on the gateway's database."""
    server = grpc.aio.server()
    ppb_grpc.add_ProcessorServiceServicer_to_server(Processor(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    db = Database(f"sqlite:///{tmp_path / 'gateway.db'}", store.metadata, migrations="gateway:migrations")
    await asyncio.to_thread(db.start)
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", interceptors=bearer_interceptors("token")
    )  # as the gateway's
    feed = Feed(db, ppb_grpc.ProcessorServiceStub(channel), hub)
    try:
        await feed.start()
        yield feed
    finally:
        await feed.stop()
        await channel.close(None)
        await server.stop(0)
        await asyncio.to_thread(db.close)


async def test_events_read_together_wake_the_watchers_once(tmp_path: Path) -> None:
    hub = WorkflowHub()
    under_way(hub, WF)
    listener = Listener(hub, [WF], 4)
    hub.add_listener(listener)
    woken = hub.waiter(WF)
    async with following(tmp_path, hub), asyncio.timeout(10):
        await listener.settled.wait()  # (caught up: events 2 to 4, read in one page)
    assert woken.is_set() and [i.sequence for i in hub.after(WF, 1) or []] == [2, 3, 4]
    assert listener.told == [WF]  # once for the three


async def test_events_published_together_are_applied_together(tmp_path: Path) -> None:
    hub = WorkflowHub()
    for workflow_id in RUNS:
        under_way(hub, workflow_id)
    listener = Listener(hub, RUNS, 3)
    hub.add_listener(listener)
    async with following(tmp_path, hub), asyncio.timeout(10):
        await listener.settled.wait()
    assert Counter(listener.told) == dict.fromkeys(RUNS, 1)  # each pair at one wake-up, never split

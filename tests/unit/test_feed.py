"""The feed publishes what it applies together as one batch: the events of one upstream read
wake each workflow's watchers, and the hub's listeners, once; with a processor on a real port
and the gateway's database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from auditflow.db import Database
from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import processor_service_pb2_grpc as ppb_grpc
from auditflow.v1 import workflow_pb2 as pb
from gateway import store
from gateway.feed import Feed
from gateway.hub import Item, WorkflowHub

WF = "wf_" + "0" * 32
RUNNING = pb.WORKFLOW_STATUS_RUNNING


def feed_event(sequence: int) -> ppb.FeedEvent:
    return ppb.FeedEvent(
        event=pb.WorkflowEvent(workflow_id=WF, sequence=sequence, status=RUNNING),
        snapshot=pb.StatusSnapshot(workflow_id=WF, status=RUNNING, last_sequence=sequence),
    )


class Processor(ppb_grpc.ProcessorServiceServicer):
    """Subscribes the feed, then holds the stream open; its log has events 1 to 4."""

    async def Follow(self, request: ppb.FollowRequest, context: Any) -> AsyncIterator[ppb.FollowResponse]:
        yield ppb.FollowResponse(heartbeat=pb.Heartbeat())
        await asyncio.Event().wait()

    async def ReadEvents(self, request: ppb.ReadEventsRequest, context: Any) -> ppb.ReadEventsResponse:
        after = {c.workflow_id: c.after_sequence for c in request.cursors}.get(WF, 4)
        return ppb.ReadEventsResponse(events=[feed_event(s) for s in range(after + 1, 5)])


class Listener:
    def __init__(self) -> None:
        self.told: list[str] = []

    def changed(self, workflow_id: str) -> None:
        self.told.append(workflow_id)


async def test_events_read_together_wake_the_watchers_once(tmp_path: Path) -> None:
    server = grpc.aio.server()
    ppb_grpc.add_ProcessorServiceServicer_to_server(Processor(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    db = Database(f"sqlite:///{tmp_path / 'gateway.db'}", store.metadata, migrations="gateway:migrations")
    await asyncio.to_thread(db.start)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    hub = WorkflowHub()
    hub.publish(Item.event(feed_event(1).event, feed_event(1).snapshot))  # a run under way
    listener = Listener()
    hub.add_listener(listener)
    woken = hub.waiter(WF)
    feed = Feed(db, ppb_grpc.ProcessorServiceStub(channel), hub)
    try:
        await feed.start()
        async with asyncio.timeout(10):
            await feed.connected.wait()  # (caught up: events 2 to 4, read in one page)
        assert woken.is_set() and [i.sequence for i in hub.after(WF, 1) or []] == [2, 3, 4]
        assert listener.told == [WF]  # once for the three
    finally:
        await feed.stop()
        await channel.close(None)
        await server.stop(0)
        await asyncio.to_thread(db.close)

"""A Server-Sent Events stream on a real port: one send per wake-up, the `retry:` line in the
first message's send and `event: end` in the last one's, with the bytes a client reads the
same as when each went on its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from auditflow.v1 import workflow_pb2 as pb
from gateway.encoded import Joined, Written
from gateway.hub import Item
from gateway.rest.app import END, RETRY, _write_events
from tests.support.grpc_helpers import free_port

WF = "wf_" + "0" * 32


def item(sequence: int, done: bool = False) -> Item:
    status = pb.WORKFLOW_STATUS_COMPLETED if done else pb.WORKFLOW_STATUS_RUNNING
    event = pb.WorkflowEvent(workflow_id=WF, sequence=sequence, status=status)
    snapshot = pb.StatusSnapshot(workflow_id=WF, status=status, last_sequence=sequence, is_completed=done)
    return Item.event(event, snapshot)


class Recorded(web.StreamResponse):
    """A response that remembers each of its sends."""

    def __init__(self, sends: list[bytes]) -> None:
        super().__init__(status=200)
        self.sends = sends

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))
        await super().write(data)


@dataclass
class Served:
    """What the stream sent (one entry per send) and what the client read."""

    sends: list[bytes] = field(default_factory=list)
    body: bytes = b""


async def serve(messages: Sequence[Written]) -> Served:
    """Stream `messages` as Server-Sent Events from a real server to a real client."""
    served = Served()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = Recorded(served.sends)
        response.content_type = "text/event-stream"
        await response.prepare(request)

        async def rest() -> AsyncIterator[Written]:
            for message in messages[1:]:
                yield message

        await _write_events(response, messages[0] if messages else None, rest())
        return response

    app = web.Application()
    app.router.add_get("/stream", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as client, client.get(f"http://127.0.0.1:{port}/stream") as answer:
            served.body = await answer.read()
    finally:
        await runner.cleanup()
    return served


async def test_a_stream_of_one_final_event_is_one_send() -> None:
    last = item(3, done=True)
    served = await serve([last])
    assert served.sends == [RETRY + last.sse + END]
    assert served.body == RETRY + last.sse + END


async def test_the_retry_line_goes_with_the_first_event_and_the_end_with_the_last() -> None:
    events = [item(1), item(2), item(3, done=True)]
    served = await serve(events)
    assert served.sends == [RETRY + events[0].sse, events[1].sse, events[2].sse + END]
    assert served.body == RETRY + b"".join(e.sse for e in events) + END


async def test_events_ready_together_and_the_end_are_one_send() -> None:
    joined = Joined([item(4), item(5, done=True)])
    served = await serve([item(3), joined])
    assert joined.ends and served.sends == [RETRY + item(3).sse, joined.sse + END]


async def test_a_stream_that_stops_without_a_final_event_still_says_it_ended() -> None:
    served = await serve([item(1), item(2)])
    assert served.sends == [RETRY + item(1).sse, item(2).sse, END]


async def test_a_stream_with_nothing_to_send_is_one_send_of_retry_and_end() -> None:
    served = await serve([])
    assert served.sends == [RETRY + END]
    assert served.body == RETRY + END

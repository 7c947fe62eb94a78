"""The floor under `bench/watch.py`: the same watchers, served by the least one Python process
can do.

No database, no authentication, no processor, no feed: a grpc.aio server (WorkflowService's
WatchStatus, Approve and GetStatus, through generic handlers that send bytes as they are) and
an aiohttp server (the SSE stream, on the same path as the gateway's) hold one run's messages
in memory, each encoded once (by the gateway's own `gateway.hub.Item`), and hand each to every
watcher as soon as it exists. The gRPC server takes the gateway's options (`auditflow.serving`),
the HTTP server the gateway's listen backlog.

Approve plays the run: the same sequences as the real one in `bench/watch.py` (APPROVED; then
QUEUED and STARTED together, as the processor commits them; a cycle every `--cycle-seconds`;
the last cycle and COMPLETED together), each event stamped with the time it is made, as a
commit stamps it. What the gateway costs beyond this floor is its own; what the floor costs
is what the machine, gRPC or aiohttp, and the clients leave for anything at all.

    python bench/_watch_floor.py --port P --rest-port R     (bench/watch.py --floor starts it)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from auditflow import convert, serving  # noqa: E402
from auditflow.connections import ConnectionSettings  # noqa: E402
from auditflow.v1 import workflow_pb2 as pb  # noqa: E402
from auditflow.v1 import workflow_service_pb2 as wpb  # noqa: E402
from gateway.hub import Item  # noqa: E402
from gateway.rest.app import LISTEN_BACKLOG  # noqa: E402

WORKFLOW_ID = "wf_00000000000000000000000000f100r"


class Run:
    """The run's log, in memory, and its watchers' wake-up."""

    def __init__(self, steps: int, cycle_seconds: float) -> None:
        self.steps, self.cycle_seconds = steps, cycle_seconds
        self.log: list[Item] = []
        self.changed = asyncio.Event()
        self.playing: asyncio.Task[None] | None = None
        self._publish((pb.EVENT_TYPE_CREATED, pb.WORKFLOW_STATUS_AWAITING_APPROVAL, "created"))

    @property
    def ended(self) -> bool:
        return bool(self.log) and self.log[-1].terminal

    def approve(self) -> None:
        if self.playing is None:
            self.playing = asyncio.get_running_loop().create_task(self._play())

    async def _play(self) -> None:
        self._publish((pb.EVENT_TYPE_APPROVED, pb.WORKFLOW_STATUS_APPROVED, "approved"))
        await asyncio.sleep(0.005)  # (the relay's Enqueue and the processor's claim)
        self._publish(
            (pb.EVENT_TYPE_QUEUED, pb.WORKFLOW_STATUS_QUEUED, "queued"),
            (pb.EVENT_TYPE_STARTED, pb.WORKFLOW_STATUS_RUNNING, "started"),
        )
        for cycle in range(1, self.steps + 1):
            await asyncio.sleep(self.cycle_seconds)
            done = (pb.EVENT_TYPE_CYCLE_COMPLETED, pb.WORKFLOW_STATUS_RUNNING, f"cycle {cycle} completed")
            if cycle < self.steps:
                self._publish(done)
            else:
                self._publish(done, (pb.EVENT_TYPE_COMPLETED, pb.WORKFLOW_STATUS_COMPLETED, "completed"))

    def _publish(self, *events: tuple[int, int, str]) -> None:
        now = convert.utcnow()
        for kind, status, text in events:
            sequence = len(self.log) + 1
            event = pb.WorkflowEvent(
                workflow_id=WORKFLOW_ID,
                sequence=sequence,
                type=kind,  # type: ignore[arg-type]
                status=status,
                message=text,
                actor="floor",  # type: ignore[arg-type]
                time=convert.timestamp(now),
                hash="0" * 64,
            )
            terminal = status == pb.WORKFLOW_STATUS_COMPLETED
            snapshot = pb.StatusSnapshot(
                workflow_id=WORKFLOW_ID,
                status=status,
                last_message=text,  # type: ignore[arg-type]
                last_sequence=sequence,
                is_completed=terminal,
                updated_at=convert.timestamp(now),
            )
            self.log.append(Item.event(event, snapshot))
        self.changed.set()
        self.changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[Item]:
        """Every item from the first, to the terminal one."""
        sent = 0
        while True:
            changed = self.changed
            while sent < len(self.log):
                yield self.log[sent]
                sent += 1
            if self.ended:
                return
            await changed.wait()


def grpc_server(run: Run, port: int) -> grpc.aio.Server:
    async def watch(request: bytes, context: Any) -> AsyncIterator[bytes]:
        async for item in run.follow():
            yield item.wire

    async def approve(request: bytes, context: Any) -> bytes:
        run.approve()
        return wpb.ApproveResponse(workflow_id=WORKFLOW_ID, approved=True).SerializeToString()

    async def get_status(request: bytes, context: Any) -> bytes:
        last = run.log[-1]
        return wpb.GetStatusResponse(status=last.message.snapshot).SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "auditflow.v1.WorkflowService",
        {
            "WatchStatus": grpc.unary_stream_rpc_method_handler(watch),
            "Approve": grpc.unary_unary_rpc_method_handler(approve),
            "GetStatus": grpc.unary_unary_rpc_method_handler(get_status),
        },
    )
    server = grpc.aio.server(options=serving.server_options(ConnectionSettings()))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    return server


def sse_app(run: Run) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b"retry: 1000\n\n")
        async for item in run.follow():
            await response.write(item.sse)
        await response.write(b"event: end\ndata: {}\n\n")
        return response

    app = web.Application()
    app.router.add_get("/workflows/{workflow_id}/status/stream", stream)
    return app


async def serve(args: argparse.Namespace) -> None:
    run = Run(args.steps, args.cycle_seconds)
    server = grpc_server(run, args.port)
    await server.start()
    runner = web.AppRunner(sse_app(run), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.rest_port, backlog=LISTEN_BACKLOG).start()
    print("serving", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="gRPC port")
    parser.add_argument("--rest-port", type=int, required=True, help="HTTP port (SSE)")
    parser.add_argument("--steps", type=int, default=20, help="cycles of the run")
    parser.add_argument("--cycle-seconds", type=float, default=0.25, help="time between cycles")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()

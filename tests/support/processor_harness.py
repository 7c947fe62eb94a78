"""In-process processors on ephemeral ports for integration tests, and stream helpers."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from auditflow.auth.client import bearer_interceptors
from auditflow.v1 import processor_service_pb2 as ps
from auditflow.v1 import processor_service_pb2_grpc as ps_grpc
from auditflow.v1 import workflow_pb2 as pb
from processor.server import Processor, create_server
from processor.settings import Settings
from tests.support import auth

E = pb.EventType
S = pb.WorkflowStatus
WatchResponse = ps.ProcessorServiceWatchStatusResponse

FAST: dict[str, Any] = {
    "plugins": ("tests.support.procedures",),
    "cycle_delay": 0.01,
    "poll_interval": 0.05,
    "heartbeat_interval": 2.0,
    "lease_seconds": 5.0,
    "grace_period": 5.0,
}


@dataclass
class Harness:
    """A started processor and an async stub talking to it."""

    processor: Processor
    channel: grpc.aio.Channel
    stub: ps_grpc.ProcessorServiceAsyncStub
    db_path: Path

    async def close(self) -> None:
        await self.channel.close(None)
        await self.processor.stop(2.0)


@dataclass
class Harnesses:
    """Factory fixture: `await start(**settings)`; everything started is stopped at the end."""

    tmp_path: Path
    started: list[Harness] = field(default_factory=list)

    async def start(self, db: str = "processor.db", **overrides: Any) -> Harness:
        path = self.tmp_path / db
        settings = Settings(
            **{**FAST, **auth.processor_settings(), "database_url": f"sqlite:///{path}", "port": 0, **overrides}
        )
        processor = create_server("127.0.0.1:0", settings)
        await processor.start()
        channel = grpc.aio.insecure_channel(processor.address, interceptors=bearer_interceptors(auth.GATEWAY_TOKEN))
        harness = Harness(processor, channel, ps_grpc.ProcessorServiceStub(channel), path)
        self.started.append(harness)
        return harness

    async def close(self) -> None:
        for harness in reversed(self.started):
            await harness.close()


def new_id() -> str:
    return f"wf_{uuid.uuid4().hex}"


def step(procedure: str, **parameters: Any) -> pb.PlanStep:
    s = pb.PlanStep(procedure=procedure)
    s.parameters.update(parameters)
    return s


def enqueue_request(steps: list[pb.PlanStep], **fields: Any) -> ps.EnqueueRequest:
    values: dict[str, Any] = {
        "workflow_id": new_id(),
        "title": "test run",
        "base_sequence": 2,
        "approved_by": "alice",
        **fields,
    }
    return ps.EnqueueRequest(plan=steps, **values)


def watch(stub: ps_grpc.ProcessorServiceAsyncStub, workflow_id: str, after: int = 0) -> Any:
    return stub.WatchStatus(ps.ProcessorServiceWatchStatusRequest(workflow_id=workflow_id, after_sequence=after))


async def collect(
    stub: ps_grpc.ProcessorServiceAsyncStub, workflow_id: str, after: int = 0, timeout: float = 30.0
) -> list[WatchResponse]:
    """Every message of a WatchStatus stream until it ends (it must end OK)."""

    async def run() -> list[WatchResponse]:
        return [message async for message in watch(stub, workflow_id, after)]

    return await asyncio.wait_for(run(), timeout)


async def read_until(
    call: Any, predicate: Callable[[WatchResponse], bool], timeout: float = 30.0
) -> list[WatchResponse]:
    """Read a live stream until a message satisfies `predicate`; returns what was read."""

    async def run() -> list[WatchResponse]:
        seen: list[WatchResponse] = []
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:  # type: ignore[attr-defined]
                raise AssertionError(f"stream ended before the awaited message; got {seen}")
            seen.append(message)
            if predicate(message):
                return seen

    return await asyncio.wait_for(run(), timeout)


async def drain(call: Any, timeout: float = 30.0) -> list[WatchResponse]:
    """Read a live stream (read API, like read_until) until it ends."""

    async def run() -> list[WatchResponse]:
        seen: list[WatchResponse] = []
        while (message := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
            seen.append(message)
        return seen

    return await asyncio.wait_for(run(), timeout)


def events(messages: list[WatchResponse]) -> list[pb.WorkflowEvent]:
    return [m.event for m in messages if m.WhichOneof("kind") == "event"]


def types(messages: list[WatchResponse]) -> list[str]:
    return [E.Name(e.type).removeprefix("EVENT_TYPE_") for e in events(messages)]


def assert_gap_free(messages: list[WatchResponse], first: int) -> None:
    sequences = [e.sequence for e in events(messages)]
    assert sequences == list(range(first, first + len(sequences))), sequences


def run_row(db_path: Path, workflow_id: str) -> dict[str, Any]:
    conn = sqlite3.connect(str(db_path))
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("select * from runs where workflow_id = ?", (workflow_id,)).fetchone()
        return dict(row)
    finally:
        conn.close()

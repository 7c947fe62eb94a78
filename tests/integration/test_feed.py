"""The gateway follows the processor through one feed: gap-free across a processor restart,
watchers served from memory (a late joiner's log filled from the sources once, however many
join), and honest status: Approve, GetStatus and the streams say when approved work waits for
an unavailable processor, and a repeated Approve after the run ended says so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway.server import RECONNECT_WITHIN, Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from processor.server import Processor
from processor.server import create_server as create_processor
from processor.settings import Settings as ProcessorSettings
from tests.support import auth
from tests.support.grpc_helpers import as_user, free_port, read_and_approve, step

S = pb.WorkflowStatus
PLUGINS = ("tests.support.procedures",)
QUEUED = "queued until a processor is back"


@dataclass
class Pair:
    tmp_path: Path
    processor_address: str
    gateway: Gateway | None = None
    processor: Processor | None = None
    started: list[Any] = field(default_factory=list)

    async def start_processor(self) -> Processor:
        settings = ProcessorSettings(
            **auth.processor_settings(),
            database_url=f"sqlite:///{self.tmp_path / 'processor.db'}",
            plugins=PLUGINS,
            cycle_delay=0.02,
            poll_interval=0.05,
            heartbeat_interval=0.5,
            worker_id="feed-test",
        )
        self.processor = create_processor(self.processor_address, settings)
        await self.processor.start()
        return self.processor

    async def start_gateway(self) -> Gateway:
        settings = GatewaySettings(
            **auth.gateway_settings(),
            database_url=f"sqlite:///{self.tmp_path / 'gateway.db'}",
            processor_target=self.processor_address,
            plugins=PLUGINS,
            heartbeat_interval=0.3,
        )
        self.gateway = create_gateway("127.0.0.1:0", settings)
        await self.gateway.start()
        return self.gateway


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    started = Pair(tmp_path, f"127.0.0.1:{free_port()}")
    yield started
    if started.gateway is not None:
        await started.gateway.stop(0)
    if started.processor is not None:
        await started.processor.stop(1)


async def create(stub: wpb_grpc.WorkflowServiceAsyncStub, steps: int = 3, seconds: float = 0.05) -> str:
    request = wpb.CreateWorkflowRequest(title="t", plan=[step("test_sleep", seconds=seconds)] * steps, max_cycles=50)
    return (await stub.CreateWorkflow(request, metadata=as_user("carol"))).workflow.workflow_id


async def events_of(stub: wpb_grpc.WorkflowServiceAsyncStub, workflow_id: str, after: int = 0) -> list[int]:
    request = wpb.WatchStatusRequest(workflow_id=workflow_id, after_sequence=after)
    messages = [m async for m in stub.WatchStatus(request, metadata=as_user("alice"))]
    assert messages[-1].snapshot.is_completed
    return [m.event.sequence for m in messages if m.HasField("event")]


async def until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_watch_stays_gap_free_while_the_processor_restarts_mid_run(pair: Pair) -> None:
    await pair.start_processor()
    gateway = await pair.start_gateway()
    async with auth.channel(gateway.address) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        workflow_id = await create(stub, steps=12, seconds=0.1)
        watch = stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=as_user("alice"))
        await read_and_approve(stub, workflow_id, as_user("alice"))
        seen: list[int] = []
        async for message in watch:
            if message.HasField("event"):
                seen.append(message.event.sequence)
            if len(seen) == 6:  # a few cycles in: restart the processor under the running stream
                assert pair.processor is not None
                await pair.processor.stop(5)
                await pair.start_processor()
            if message.snapshot.is_completed:
                break
        assert seen == list(range(1, len(seen) + 1)) and len(seen) > 12
        assert (
            await stub.GetStatus(wpb.GetStatusRequest(workflow_id=workflow_id))
        ).status.status == S.WORKFLOW_STATUS_COMPLETED
        await asyncio.wait_for(gateway.feed.connected.wait(), 30)
        assert pair.processor is not None and pair.processor.service.open_streams == 1  # the one feed, again


async def test_late_watchers_after_a_restart_read_the_log_once_from_the_processor(pair: Pair) -> None:
    processor = await pair.start_processor()
    gateway = await pair.start_gateway()
    async with auth.channel(gateway.address) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        workflow_id = await create(stub)
        await read_and_approve(stub, workflow_id, as_user("alice"))
        expected = await events_of(stub, workflow_id)
    await gateway.stop(0)
    gateway = await pair.start_gateway()  # a new gateway process: nothing in memory
    reads_before = processor.service.event_reads
    async with auth.channel(gateway.address) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        answers = await asyncio.gather(*(events_of(stub, workflow_id) for _ in range(200)))
        assert all(a == expected for a in answers)
        assert processor.service.event_reads - reads_before == 1  # one fill for the 200 watchers
        assert await events_of(stub, workflow_id, after=3) == expected[3:]


async def test_status_says_when_approved_work_waits_for_the_processor(pair: Pair) -> None:
    gateway = await pair.start_gateway()  # no processor yet
    async with auth.channel(gateway.address) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        first = await create(stub, steps=1)
        await read_and_approve(stub, first, as_user("alice"))

        async def noticed() -> bool:
            return gateway.relay.unavailable_since is not None

        await until(noticed, "the relay to find the processor unavailable")
        second = await create(stub, steps=1)
        answer = await read_and_approve(stub, second, as_user("alice"))
        assert answer.approved and answer.workflow_status == S.WORKFLOW_STATUS_APPROVED
        assert not answer.background_processing_started
        assert "queued until a processor is back (unavailable since" in answer.processing_message
        status = (await stub.GetStatus(wpb.GetStatusRequest(workflow_id=first))).status
        assert status.HasField("processor_unavailable_since") and QUEUED in status.last_message
        listed = (await stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=second))).workflow
        assert QUEUED in listed.last_message
        watch = stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=first, after_sequence=2))
        heartbeat = await watch.read()
        assert heartbeat.HasField("heartbeat") and heartbeat.snapshot.HasField("processor_unavailable_since")
        watch.cancel()
        await pair.start_processor()
        assert await events_of(stub, second)  # delivered once the processor is back
        status = (await stub.GetStatus(wpb.GetStatusRequest(workflow_id=second))).status
        assert not status.HasField("processor_unavailable_since") and status.status == S.WORKFLOW_STATUS_COMPLETED


# Long enough for gRPC's default reconnect backoff to grow to 10-17 s between attempts.
OUTAGE = 20.0


async def test_after_a_processor_restart_the_gateway_relinks_within_the_backoff_maximum(pair: Pair) -> None:
    """A real restart on the same port after a long outage: the gateway's feed is up again
    within RECONNECT_WITHIN of the processor serving. Meanwhile the first Approve after the
    processor stopped answers that the work is queued, not that it started."""
    await pair.start_processor()
    gateway = await pair.start_gateway()
    await asyncio.wait_for(gateway.feed.connected.wait(), 30)
    async with auth.channel(gateway.address) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        workflow_id = await create(stub, steps=1)
        assert pair.processor is not None
        await pair.processor.stop(0)

        async def link_down() -> bool:
            return not gateway.feed.connected.is_set()

        await until(link_down, "the gateway to see its feed break")
        answer = await read_and_approve(stub, workflow_id, as_user("alice"))
        assert answer.approved and not answer.background_processing_started
        assert QUEUED in answer.processing_message, answer.processing_message
        await asyncio.sleep(OUTAGE)  # (the outage itself: the gateway keeps retrying meanwhile)
        await pair.start_processor()
        back = time.monotonic()
        await asyncio.wait_for(gateway.feed.connected.wait(), 30)
        relinked = time.monotonic() - back
        assert relinked <= RECONNECT_WITHIN, f"linked again {relinked:.1f} s after the processor came back"
        assert await events_of(stub, workflow_id)  # the queued run went out and ran


async def test_a_repeated_approve_says_what_became_of_the_run(pair: Pair) -> None:
    await pair.start_processor()
    gateway = await pair.start_gateway()
    async with auth.channel(gateway.address) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        workflow_id = await create(stub, steps=1)
        read = (await stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=workflow_id))).workflow
        request = wpb.ApproveRequest(workflow_id=workflow_id, comment="ok", etag=read.etag)
        first = await stub.Approve(request, metadata=as_user("alice"))
        assert first.background_processing_started and first.workflow_status == S.WORKFLOW_STATUS_APPROVED
        await events_of(stub, workflow_id)
        again = await stub.Approve(request, metadata=as_user("alice"))
        assert again.approved and again.workflow_status == S.WORKFLOW_STATUS_COMPLETED
        assert not again.background_processing_started
        assert again.processing_message.startswith("the run already ended: COMPLETED")
        assert again.updated_at == again.workflow.updated_at != first.updated_at
        stored = (await stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=workflow_id))).workflow
        assert again.workflow == stored
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Approve(request, metadata=as_user("bob"))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

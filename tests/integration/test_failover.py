"""A gateway reaches a set of processors (PostgreSQL, scaled out): calls are balanced over
them, and when one stops, the gateway's feed resumes from another at its last position, so
every watcher still gets every event, gap-free, and every run completes on the survivor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from auditflow.config import ConfigError
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway.server import Gateway, processor_target
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from processor.server import Processor
from processor.server import create_server as create_processor
from processor.settings import Settings as ProcessorSettings
from tests.support import auth
from tests.support.grpc_helpers import as_user, read_and_approve, step
from tests.support.postgres import fresh_database

PLUGINS = ("tests.support.procedures",)
STEPS = 30


@dataclass
class Cluster:
    processors: list[Processor]
    gateway: Gateway
    stub: wpb_grpc.WorkflowServiceAsyncStub


def processor(url: str, name: str) -> Processor:
    settings = ProcessorSettings(
        **auth.processor_settings(),
        database_url=url,
        plugins=PLUGINS,
        cycle_delay=0.05,
        poll_interval=0.05,
        heartbeat_interval=0.5,
        lease_seconds=2.0,
        worker_id=name,
    )
    return create_processor("127.0.0.1:0", settings)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    with fresh_database("failovergw") as gateway_url, fresh_database("failoverproc") as processor_url:
        processors = [processor(processor_url, f"p{i}") for i in range(2)]
        for each in processors:
            await each.start()
        target = ",".join(p.address for p in processors)
        settings = GatewaySettings(
            **auth.gateway_settings(),
            database_url=gateway_url,
            processor_target=target,
            plugins=PLUGINS,
            heartbeat_interval=0.5,
        )
        gateway = create_gateway("127.0.0.1:0", settings)
        await gateway.start()
        try:
            async with auth.channel(gateway.address) as channel:
                yield Cluster(processors, gateway, wpb_grpc.WorkflowServiceStub(channel))
        finally:
            await gateway.stop(0)
            for each in processors:
                await each.stop(0)


async def events_to_the_end(stub: wpb_grpc.WorkflowServiceAsyncStub, workflow_id: str) -> list[pb.WorkflowEvent]:
    call = stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), timeout=90)
    return [m.event async for m in call if m.HasField("event")]


async def test_a_stopped_processor_is_routed_around_and_every_watch_completes_gap_free(cluster: Cluster) -> None:
    stub = cluster.stub
    plan = [step("test_sleep", seconds=0.02) for _ in range(STEPS)]
    ids = []
    for _ in range(4):
        request = wpb.CreateWorkflowRequest(title="failover", plan=plan, max_cycles=STEPS + 5)
        ids.append((await stub.CreateWorkflow(request, metadata=as_user("carol"))).workflow.workflow_id)
    watches = [asyncio.create_task(events_to_the_end(stub, w)) for w in ids]
    for workflow_id in ids:
        await read_and_approve(stub, workflow_id, as_user("alice"))
    # Both processors took runs (claims race on the shared database), and the runs are under way.
    while True:
        got = [(await stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=w))).workflow for w in ids]
        if sum(w.cycle for w in got) >= 8:
            break
        await asyncio.sleep(0.05)
    # Stop the processor the gateway's feed follows (its one stream), mid-run: the feed must
    # resume from the other, and the stopped one's runs resume there too.
    feeding = [p for p in cluster.processors if p.service.open_streams == 1]
    assert len(feeding) == 1 and sum(p.service.open_streams for p in cluster.processors) == 1
    survivor = next(p for p in cluster.processors if p is not feeding[0])
    await feeding[0].stop(0)

    for workflow_id, watch in zip(ids, watches, strict=True):
        events = await asyncio.wait_for(watch, 90)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1)), workflow_id  # gap-free
        assert events[-1].type == pb.EVENT_TYPE_COMPLETED, events[-1]
        done = [e.cycle for e in events if e.type == pb.EVENT_TYPE_CYCLE_COMPLETED]
        assert sorted(set(done)) == list(range(1, STEPS + 1)), done  # every step, none lost
        verified = await stub.VerifyTrail(wpb.VerifyTrailRequest(workflow_id=workflow_id))
        assert verified.intact, verified
    assert survivor.service.open_streams == 1  # the feed follows the survivor now
    # New work still reaches a processor: the dead one is routed around.
    request = wpb.CreateWorkflowRequest(title="after", plan=[step("test_noop")])
    late = (await stub.CreateWorkflow(request, metadata=as_user("carol"))).workflow.workflow_id
    await read_and_approve(stub, late, as_user("alice"))
    events = await asyncio.wait_for(events_to_the_end(stub, late), 60)
    assert events[-1].type == pb.EVENT_TYPE_COMPLETED


def test_processor_targets() -> None:
    assert processor_target("127.0.0.1:5") == "127.0.0.1:5"
    assert processor_target("dns:///processor:50052") == "dns:///processor:50052"
    assert processor_target("10.0.0.1:5, 10.0.0.2:6") == "ipv4:10.0.0.1:5,10.0.0.2:6"
    assert processor_target("[::1]:5,[::2]:6") == "ipv6:[::1]:5,[::2]:6"
    for bad in ("proc-a:5,proc-b:6", "10.0.0.1:5,[::1]:6", "10.0.0.1,10.0.0.2:6"):
        with pytest.raises(ConfigError, match="dns:///NAME:PORT"):
            processor_target(bad)


async def test_a_watch_on_one_gateway_of_a_plan_approved_on_another_runs_to_the_end() -> None:
    """Two gateway replicas on one database: the plan is created on the first and approved on
    the second, so the first learns of the APPROVED event only from the database (the
    processor's log starts after it). A watch on the first still gets every event, in order,
    to COMPLETED."""
    with fresh_database("replicagw") as gateway_url, fresh_database("replicaproc") as processor_url:
        worker = processor(processor_url, "p0")
        await worker.start()
        gateways = [
            create_gateway(
                "127.0.0.1:0",
                GatewaySettings(
                    **auth.gateway_settings(),
                    database_url=gateway_url,
                    processor_target=worker.address,
                    plugins=PLUGINS,
                    heartbeat_interval=0.5,
                ),
            )
            for _ in range(2)
        ]
        for gateway in gateways:
            await gateway.start()
        try:
            async with auth.channel(gateways[0].address) as first, auth.channel(gateways[1].address) as second:
                creator, approver = wpb_grpc.WorkflowServiceStub(first), wpb_grpc.WorkflowServiceStub(second)
                request = wpb.CreateWorkflowRequest(title="replicas", plan=[step("test_noop")] * 3)
                created = await creator.CreateWorkflow(request, metadata=as_user("carol"))
                workflow_id = created.workflow.workflow_id
                approve = wpb.ApproveRequest(workflow_id=workflow_id, etag=created.workflow.etag)
                await approver.Approve(approve, metadata=as_user("alice"))
                events = await events_to_the_end(creator, workflow_id)
        finally:
            for gateway in gateways:
                await gateway.stop(0)
            await worker.stop(0)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[1].type == pb.EVENT_TYPE_APPROVED and events[-1].type == pb.EVENT_TYPE_COMPLETED

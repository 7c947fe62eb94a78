"""The outbox relay delivers every row exactly as far as it can, and never stalls on one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway.server import Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from gateway.store import OutboxRow
from processor.server import Processor
from processor.server import create_server as create_processor
from processor.settings import Settings as ProcessorSettings
from tests.support import auth
from tests.support.grpc_helpers import as_user, dump_sqlite, free_port, ledger_step, read_and_approve, step

S = pb.WorkflowStatus
PLUGINS = ("tests.support.procedures",)


@pytest.fixture
async def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway whose processor is not started yet (see `start_processor`); indirect
    parametrization may override settings."""
    settings = GatewaySettings(
        **auth.gateway_settings(),
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        processor_target=f"127.0.0.1:{free_port()}",
        plugins=PLUGINS,
        **getattr(request, "param", {}),
    )
    server = create_gateway("127.0.0.1:0", settings)
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture
async def start_processor(gateway: Gateway, tmp_path: Path) -> AsyncIterator[Callable[[], Awaitable[Processor]]]:
    started: list[Processor] = []

    async def start() -> Processor:
        settings = ProcessorSettings(
            **auth.processor_settings(),
            database_url=f"sqlite:///{tmp_path / 'processor.db'}",
            plugins=PLUGINS,
            cycle_delay=0.01,
        )
        processor = create_processor(gateway.settings.processor_target, settings)
        await processor.start()
        started.append(processor)
        return processor

    yield start
    for processor in started:
        await processor.stop(1)


async def until(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = 90.0) -> None:
    """Wait for a condition; `timeout` only guards against a hang (a hundred runs on a busy
    2-core machine took more than 20 s)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def status(stub: wpb_grpc.WorkflowServiceAsyncStub, workflow_id: str) -> pb.Workflow:
    return (await stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=workflow_id))).workflow


async def test_a_refused_workflow_and_its_cancel_do_not_stall_the_relay(
    gateway: Gateway, start_processor: Callable[[], Awaitable[Processor]], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.csv"
    ledger.write_text("entry_id,posting_date,account,amount\nJE-1,2026-01-01,6100,1\n")
    async with auth.channel(gateway.address) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        create = wpb.CreateWorkflowRequest(title="t", plan=[ledger_step(ledger)])
        doomed = (await stub.CreateWorkflow(create, metadata=as_user("carol"))).workflow.workflow_id
        ledger.unlink()  # the processor will refuse the plan: its ledger is gone
        await read_and_approve(stub, doomed, as_user("alice"))
        cancel = await stub.CancelWorkflow(wpb.CancelWorkflowRequest(workflow_id=doomed), metadata=as_user("carol"))
        assert cancel.pending  # queued behind the Enqueue, for a run that will never exist
        await start_processor()

        async def settled() -> bool:
            return gateway.relay.pending == 0 and (await status(stub, doomed)).is_completed

        await until(settled, "both rows of the refused workflow to be settled")
        workflow = await status(stub, doomed)
        assert (workflow.status, workflow.error.reason) == (S.WORKFLOW_STATUS_FAILED, "DISPATCH_REFUSED")
        assert dump_sqlite(gateway.settings.database_url.removeprefix("sqlite:///"))["outbox"] == []
        create = wpb.CreateWorkflowRequest(title="t", plan=[step("test_noop")])
        fine = (await stub.CreateWorkflow(create, metadata=as_user("carol"))).workflow
        await stub.Approve(wpb.ApproveRequest(workflow_id=fine.workflow_id, etag=fine.etag), metadata=as_user("alice"))

        async def completed() -> bool:
            return (await status(stub, fine.workflow_id)).status == S.WORKFLOW_STATUS_COMPLETED

        await until(completed, "the next workflow to complete")


async def test_a_failure_of_our_own_while_delivering_is_retried(
    gateway: Gateway, start_processor: Callable[[], Awaitable[Processor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    await start_processor()
    real_dispatched = gateway.feed.dispatched
    failures: list[str] = []

    async def flaky_dispatched(row: OutboxRow, run: ppb.Run) -> None:
        if not failures:
            failures.append(row.workflow_id)
            raise OSError("disk full")
        await real_dispatched(row, run)

    monkeypatch.setattr(gateway.feed, "dispatched", flaky_dispatched)
    async with auth.channel(gateway.address) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        request = wpb.CreateWorkflowRequest(title="t", plan=[step("test_noop")])
        workflow_id = (await stub.CreateWorkflow(request, metadata=as_user("carol"))).workflow.workflow_id
        await read_and_approve(stub, workflow_id, as_user("alice"))

        async def completed() -> bool:
            return (await status(stub, workflow_id)).status == S.WORKFLOW_STATUS_COMPLETED

        await until(completed, "the workflow to complete despite the failed delivery")

        async def delivered() -> bool:  # (the run completes through the feed meanwhile)
            return gateway.relay.pending == 0

        await until(delivered, "the relay to record the dispatch on its retry")
    assert failures == [workflow_id]
    assert dump_sqlite(gateway.settings.database_url.removeprefix("sqlite:///"))["outbox"] == []


async def test_during_an_outage_rows_wait_without_a_task_each_and_keep_their_order(
    gateway: Gateway, start_processor: Callable[[], Awaitable[Processor]]
) -> None:
    async with auth.channel(gateway.address) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        request = wpb.CreateWorkflowRequest(title="t", plan=[step("test_noop")])
        ids = [(await stub.CreateWorkflow(request, metadata=as_user("carol"))).workflow.workflow_id for _ in range(6)]
        await read_and_approve(stub, ids[0], as_user("alice"))

        async def gate_closed() -> bool:  # the first Enqueue found no processor
            return gateway.relay.gate_closed

        await until(gate_closed, "the relay to notice the outage")
        for workflow_id in ids[1:]:
            await read_and_approve(stub, workflow_id, as_user("alice"))
        # A cancel queued behind its workflow's Enqueue, in the same outage.
        cancel = await stub.CancelWorkflow(wpb.CancelWorkflowRequest(workflow_id=ids[5]), metadata=as_user("carol"))
        assert cancel.pending
        assert gateway.relay.parked == 6  # five Enqueues and the cancel: no sender task for any
        await start_processor()

        async def settled() -> bool:
            return gateway.relay.pending == 0 and all([(await status(stub, w)).is_completed for w in ids])

        await until(settled, "every parked row to be delivered")
        assert gateway.relay.parked == 0
        assert [(await status(stub, w)).status for w in ids[:5]] == [S.WORKFLOW_STATUS_COMPLETED] * 5
        # The cancel went out after its Enqueue: the run exists and ended cancelled or completed.
        assert (await status(stub, ids[5])).status in (S.WORKFLOW_STATUS_CANCELLED, S.WORKFLOW_STATUS_COMPLETED)
    assert dump_sqlite(gateway.settings.database_url.removeprefix("sqlite:///"))["outbox"] == []


async def test_one_stream_follows_every_run_and_list_filters_are_current(
    start_processor: Callable[[], Awaitable[Processor]], gateway: Gateway
) -> None:
    """No window: a hundred runs at once (and watchers on them) cost one stream to the
    processor, and Get/List with a status filter agree with the processor for every run."""
    processor = await start_processor()
    async with auth.channel(gateway.address) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        request = wpb.CreateWorkflowRequest(title="t", plan=[step("test_sleep", seconds=0.05)] * 3, max_cycles=10)
        created = [(await stub.CreateWorkflow(request, metadata=as_user("carol"))).workflow for _ in range(100)]
        ids = [w.workflow_id for w in created]
        watchers = [stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=w)) for w in ids[:20] for _ in range(3)]
        for workflow in created:
            approve = wpb.ApproveRequest(workflow_id=workflow.workflow_id, etag=workflow.etag)
            await stub.Approve(approve, metadata=as_user("alice"))
        running = wpb.ListWorkflowsRequest(page_size=500, statuses=[S.WORKFLOW_STATUS_RUNNING])

        async def some_running() -> bool:
            return bool((await stub.ListWorkflows(running)).workflows)

        await until(some_running, "runs to show as RUNNING in List")
        await asyncio.wait_for(gateway.feed.connected.wait(), 30)
        assert processor.service.open_streams == 1  # the gateway's one feed, not one stream per run or watcher
        for message_lists in await asyncio.gather(*(drain(call) for call in watchers)):
            sequences = [m.event.sequence for m in message_lists if m.HasField("event")]
            assert sequences == list(range(1, len(sequences) + 1)) and message_lists[-1].snapshot.is_completed

        async def all_completed() -> bool:
            done = wpb.ListWorkflowsRequest(page_size=500, statuses=[S.WORKFLOW_STATUS_COMPLETED])
            return len((await stub.ListWorkflows(done)).workflows) == 100

        await until(all_completed, "List to show every run COMPLETED")
        assert not (await stub.ListWorkflows(running)).workflows
        assert processor.service.open_streams == 1


async def drain(call: Any) -> list[wpb.WatchStatusResponse]:
    return [message async for message in call]

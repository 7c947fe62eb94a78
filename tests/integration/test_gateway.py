"""The gateway on a real port with a real SQLite file, and no processor running: everything
the gateway decides on its own (create, decide, cancel, list, errors) must work without it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import Connection

from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway import store
from gateway.server import Gateway, create_server
from gateway.settings import Settings
from tests.support import auth
from tests.support.grpc_helpers import as_user, details, dump_sqlite, free_port, ledger_step, step

SAMPLE = Path(__file__).resolve().parents[2] / "auditflow" / "samples" / "ledger.csv"
S = pb.WorkflowStatus


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = Settings(
        **auth.gateway_settings(),
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        processor_target=f"127.0.0.1:{free_port()}",  # nothing listens there
        heartbeat_interval=0.2,
    )
    server = create_server("127.0.0.1:0", settings)
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture
async def stub(gateway: Gateway) -> AsyncIterator[wpb_grpc.WorkflowServiceAsyncStub]:
    async with auth.channel(gateway.address) as channel:
        yield wpb_grpc.WorkflowServiceStub(channel)


def db_path(gateway: Gateway) -> str:
    return gateway.settings.database_url.removeprefix("sqlite:///")


async def create(stub: wpb_grpc.WorkflowServiceAsyncStub, user: str = "carol") -> pb.Workflow:
    request = wpb.CreateWorkflowRequest(title="Q3 audit", plan=[ledger_step(SAMPLE)])
    response = await stub.CreateWorkflow(request, metadata=as_user(user))
    return response.workflow


def approval(workflow: pb.Workflow, **fields: str) -> wpb.ApproveRequest:
    """An approval of the revision the caller read (its etag)."""
    return wpb.ApproveRequest(workflow_id=workflow.workflow_id, etag=workflow.etag, **fields)


def rejection(workflow: pb.Workflow, comment: str = "no") -> wpb.RejectRequest:
    """A rejection, with its reason, of the revision the caller read."""
    return wpb.RejectRequest(workflow_id=workflow.workflow_id, etag=workflow.etag, comment=comment)


async def test_create_returns_a_workflow_awaiting_approval(stub: wpb_grpc.WorkflowServiceAsyncStub) -> None:
    workflow = await create(stub)
    assert workflow.workflow_id.startswith("wf_")
    assert workflow.status == S.WORKFLOW_STATUS_AWAITING_APPROVAL
    assert workflow.created_by == "carol"
    assert workflow.max_cycles == 15
    assert (workflow.progress.done, workflow.progress.total) == (0, 1)
    assert workflow.plan[0].procedure == "ledger_summary"
    assert not workflow.is_processing and not workflow.is_completed
    fetched = (await stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=workflow.workflow_id))).workflow
    assert fetched == workflow


async def test_create_with_request_id_is_idempotent(stub: wpb_grpc.WorkflowServiceAsyncStub) -> None:
    request = wpb.CreateWorkflowRequest(title="t", plan=[ledger_step(SAMPLE)], request_id="r-1")
    first = await stub.CreateWorkflow(request, metadata=as_user("carol"))
    second = await stub.CreateWorkflow(request, metadata=as_user("carol"))
    assert first.workflow.workflow_id == second.workflow.workflow_id
    listed = await stub.ListWorkflows(wpb.ListWorkflowsRequest())
    assert len(listed.workflows) == 1


async def test_approve_answers_at_once_with_the_processor_down(
    gateway: Gateway, stub: wpb_grpc.WorkflowServiceAsyncStub
) -> None:
    workflow = await create(stub)
    deadline = time.monotonic() + 30
    while gateway.relay.unavailable_since is None:  # (its first look at the processor fails)
        assert time.monotonic() < deadline, "the gateway never found the processor down"
        await asyncio.sleep(0.02)
    # Answered while the processor stays down: it never waited for the relay (a call that did
    # would wait for good; its deadline ends the test).
    answer = await stub.Approve(approval(workflow), metadata=as_user("alice"), timeout=30)
    # The answer does not claim that processing started: the work is queued for the processor.
    assert answer.approved and answer.immediate_response and not answer.background_processing_started
    assert answer.workflow_status == S.WORKFLOW_STATUS_APPROVED
    assert "queued until a processor is back" in answer.processing_message
    assert answer.workflow.decided_by == "alice"
    assert answer.workflow.is_processing and answer.workflow.background_processing
    assert gateway.relay.unavailable_since is not None
    tables = dump_sqlite(db_path(gateway))
    assert [row[1] for row in tables["outbox"]] == [workflow.workflow_id]
    assert gateway.relay.pending == 1


async def test_the_same_approval_again_gets_the_same_answer(stub: wpb_grpc.WorkflowServiceAsyncStub) -> None:
    workflow = await create(stub)
    request = approval(workflow, comment="ok")
    first = await stub.Approve(request, metadata=as_user("alice"))
    again = await stub.Approve(request, metadata=as_user("alice"))
    assert (again.approved, again.workflow_status, again.updated_at) == (
        first.approved,
        first.workflow_status,
        first.updated_at,
    )
    keyed = approval(workflow, request_id="k1")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Approve(keyed, metadata=as_user("bob"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(refused.value)["reason"] == "ALREADY_DECIDED"


async def test_same_request_id_or_same_approver_is_idempotent(stub: wpb_grpc.WorkflowServiceAsyncStub) -> None:
    workflow = await create(stub)
    request = approval(workflow, request_id="click-1")
    first = await stub.Approve(request, metadata=as_user("alice"))
    second = await stub.Approve(request, metadata=as_user("alice"))
    assert first.updated_at == second.updated_at
    other_click = approval(workflow, request_id="click-2")
    third = await stub.Approve(other_click, metadata=as_user("alice"))
    assert (third.approved, third.updated_at) == (True, first.updated_at)


async def test_another_decision_after_the_first_is_refused(
    gateway: Gateway, stub: wpb_grpc.WorkflowServiceAsyncStub
) -> None:
    workflow = await create(stub)
    await stub.Reject(rejection(workflow), metadata=as_user("bob"))
    before = dump_sqlite(db_path(gateway))
    for call, request, user in (
        (stub.Approve, approval(workflow), "alice"),
        (stub.Approve, approval(workflow), "bob"),
        (stub.Reject, rejection(workflow), "alice"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request, metadata=as_user(user))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert details(refused.value)["reason"] == "ALREADY_DECIDED"
    assert dump_sqlite(db_path(gateway)) == before


async def test_an_approval_without_the_etag_is_refused_and_changes_nothing(
    gateway: Gateway, stub: wpb_grpc.WorkflowServiceAsyncStub
) -> None:
    workflow = await create(stub)
    before = dump_sqlite(db_path(gateway))
    for request in (wpb.ApproveRequest(workflow_id=workflow.workflow_id, comment="looks fine"), approval(workflow)):
        request.etag = ""
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Approve(request, metadata=as_user("alice"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(refused.value)["fields"] == ["etag"]
        assert "read the workflow first" in (refused.value.details() or "")
    assert dump_sqlite(db_path(gateway)) == before
    still = (await stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=workflow.workflow_id))).workflow
    assert still.status == S.WORKFLOW_STATUS_AWAITING_APPROVAL and not still.approvals


async def test_a_rejection_needs_a_reason_and_the_etag(
    gateway: Gateway, stub: wpb_grpc.WorkflowServiceAsyncStub
) -> None:
    workflow = await create(stub)
    before = dump_sqlite(db_path(gateway))
    refusals = (
        (rejection(workflow, ""), "comment"),
        (rejection(workflow, "  \n "), "comment"),
        (wpb.RejectRequest(workflow_id=workflow.workflow_id, comment="wrong period"), "etag"),
    )
    for request, field in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Reject(request, metadata=as_user("bob"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert details(refused.value)["fields"] == [field]
    assert dump_sqlite(db_path(gateway)) == before
    rejected = await stub.Reject(rejection(workflow, "wrong period"), metadata=as_user("bob"))
    assert rejected.workflow.status == S.WORKFLOW_STATUS_REJECTED
    assert rejected.workflow.decision_comment == "wrong period"


async def test_twenty_concurrent_decisions_have_exactly_one_winner(
    gateway: Gateway, stub: wpb_grpc.WorkflowServiceAsyncStub
) -> None:
    workflow = await create(stub)

    async def decide(i: int) -> str:
        user = f"user{i}"
        try:
            if i % 2:
                await stub.Approve(approval(workflow), metadata=as_user(user))
            else:
                await stub.Reject(rejection(workflow), metadata=as_user(user))
            return "won"
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            return "lost"

    outcomes = await asyncio.gather(*(decide(i) for i in range(20)))
    assert outcomes.count("won") == 1
    events = dump_sqlite(db_path(gateway))["workflow_events"]
    decisions = [e for e in events if e[2] in (pb.EVENT_TYPE_APPROVED, pb.EVENT_TYPE_REJECTED)]
    assert len(decisions) == 1
    assert sorted(e[1] for e in events) == [1, 2]


async def test_cancel_while_awaiting_approval_ends_the_workflow(stub: wpb_grpc.WorkflowServiceAsyncStub) -> None:
    workflow = await create(stub)
    answer = await stub.CancelWorkflow(
        wpb.CancelWorkflowRequest(workflow_id=workflow.workflow_id, reason="dup"), metadata=as_user("carol")
    )
    assert answer.workflow.status == S.WORKFLOW_STATUS_CANCELLED
    assert not answer.pending
    events = [r async for r in stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow.workflow_id))]
    assert [(e.event.sequence, e.event.type) for e in events] == [
        (1, pb.EVENT_TYPE_CREATED),
        (2, pb.EVENT_TYPE_CANCELLED),
    ]
    assert events[-1].snapshot.is_completed


async def test_watch_replays_after_a_sequence_and_ends_after_rejection(
    stub: wpb_grpc.WorkflowServiceAsyncStub,
) -> None:
    workflow = await create(stub)
    stream = stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow.workflow_id))
    first = await stream.read()
    assert first.event.sequence == 1 and first.snapshot.status == S.WORKFLOW_STATUS_AWAITING_APPROVAL
    heartbeat = await stream.read()  # nothing happens for a while: a heartbeat with the snapshot
    assert heartbeat.HasField("heartbeat") and heartbeat.snapshot.workflow_id == workflow.workflow_id
    await stub.Reject(rejection(workflow), metadata=as_user("bob"))
    rest = []
    while (message := await stream.read()) != grpc.aio.EOF:
        if message.HasField("event"):
            rest.append(message)
    assert [r.event.sequence for r in rest] == [2]
    assert rest[0].snapshot.status == S.WORKFLOW_STATUS_REJECTED and rest[0].snapshot.is_completed
    assert (await stream.code()) == grpc.StatusCode.OK
    resumed = [
        r async for r in stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow.workflow_id, after_sequence=1))
    ]
    assert [r.event.sequence for r in resumed] == [2]


async def test_list_pages_and_filters(stub: wpb_grpc.WorkflowServiceAsyncStub) -> None:
    created = [await create(stub) for _ in range(5)]
    ids = [w.workflow_id for w in created]
    await stub.Reject(rejection(created[0]), metadata=as_user("bob"))
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListWorkflows(wpb.ListWorkflowsRequest(page_size=2, page_token=token))
        assert len(page.workflows) <= 2
        seen += [w.workflow_id for w in page.workflows]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    rejected = await stub.ListWorkflows(wpb.ListWorkflowsRequest(statuses=[S.WORKFLOW_STATUS_REJECTED]))
    assert [w.workflow_id for w in rejected.workflows] == [ids[0]]


UNKNOWN = "wf_" + "0" * 32
SOME_ETAG = "0" * 64  # well-formed: the refusal is about the workflow, not the etag
BAD_PATH = "/no/such/ledger.csv"


@pytest.mark.parametrize(
    ("rpc", "request_", "code", "field"),
    [
        ("GetWorkflow", wpb.GetWorkflowRequest(workflow_id=UNKNOWN), grpc.StatusCode.NOT_FOUND, None),
        ("GetWorkflow", wpb.GetWorkflowRequest(workflow_id="nope"), grpc.StatusCode.INVALID_ARGUMENT, "workflow_id"),
        ("GetStatus", wpb.GetStatusRequest(workflow_id=""), grpc.StatusCode.INVALID_ARGUMENT, "workflow_id"),
        ("Approve", wpb.ApproveRequest(workflow_id=UNKNOWN, etag=SOME_ETAG), grpc.StatusCode.NOT_FOUND, None),
        (
            "Approve",
            wpb.ApproveRequest(workflow_id="wf_X", etag=SOME_ETAG),
            grpc.StatusCode.INVALID_ARGUMENT,
            "workflow_id",
        ),
        (
            "Reject",
            wpb.RejectRequest(workflow_id=UNKNOWN, etag=SOME_ETAG, comment="no"),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
        ("CancelWorkflow", wpb.CancelWorkflowRequest(workflow_id=UNKNOWN), grpc.StatusCode.NOT_FOUND, None),
        ("CreateWorkflow", wpb.CreateWorkflowRequest(title="t"), grpc.StatusCode.INVALID_ARGUMENT, "plan"),
        (
            "CreateWorkflow",
            wpb.CreateWorkflowRequest(title="", plan=[ledger_step(SAMPLE)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "title",
        ),
        (
            "CreateWorkflow",
            wpb.CreateWorkflowRequest(title="t", plan=[ledger_step(SAMPLE)] * 101),
            grpc.StatusCode.INVALID_ARGUMENT,
            "plan",
        ),
        (
            "CreateWorkflow",
            wpb.CreateWorkflowRequest(title="t", plan=[step("no_such_procedure")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "plan[0].procedure",
        ),
        (
            "CreateWorkflow",
            wpb.CreateWorkflowRequest(title="t", plan=[ledger_step(BAD_PATH)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "plan[0].parameters.path",
        ),
        (
            "CreateWorkflow",
            wpb.CreateWorkflowRequest(title="t", plan=[step("ledger_summary", path=str(SAMPLE), blob="x" * 20000)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "plan[0].parameters",
        ),
        (
            "CreateWorkflow",
            wpb.CreateWorkflowRequest(title="t", plan=[ledger_step(SAMPLE)], max_cycles=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_cycles",
        ),
        (
            "CreateWorkflow",
            wpb.CreateWorkflowRequest(title="t", plan=[ledger_step(SAMPLE)], orchestrator="nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "orchestrator",
        ),
        ("ListWorkflows", wpb.ListWorkflowsRequest(page_size=-1), grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
        ("ListWorkflows", wpb.ListWorkflowsRequest(page_token="%%%"), grpc.StatusCode.INVALID_ARGUMENT, "page_token"),
        ("ListWorkflows", wpb.ListWorkflowsRequest(statuses=[0]), grpc.StatusCode.INVALID_ARGUMENT, "statuses"),
    ],
)
async def test_bad_input_gets_its_code_and_changes_nothing(
    gateway: Gateway,
    stub: wpb_grpc.WorkflowServiceAsyncStub,
    rpc: str,
    request_: object,
    code: grpc.StatusCode,
    field: str | None,
) -> None:
    await create(stub)  # something stored, to show it stays as it was
    before = dump_sqlite(db_path(gateway))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await getattr(stub, rpc)(request_, metadata=as_user("dave"))
    assert refused.value.code() == code
    info = details(refused.value)
    assert info["reason"]
    if field is not None:
        assert field in info["fields"]
    assert dump_sqlite(db_path(gateway)) == before


async def test_watch_of_an_unknown_workflow_is_not_found(stub: wpb_grpc.WorkflowServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=UNKNOWN)):
            pass
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_watch_of_a_workflow_the_gateway_holds_reads_nothing(
    gateway: Gateway, stub: wpb_grpc.WorkflowServiceAsyncStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its start is checked against the hub's newest event, not the row: a thousand watchers
    reconnecting at once cost the database nothing."""
    workflow = await create(stub)
    asked: list[str] = []
    read_row = store.get

    def counted(conn: Connection, workflow_id: str, *, lock: bool = False) -> store.WorkflowRecord | None:
        asked.append(workflow_id)
        return read_row(conn, workflow_id, lock=lock)

    monkeypatch.setattr(store, "get", counted)
    stream = stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow.workflow_id))
    first = await stream.read()
    assert first.event.sequence == 1 and first.snapshot.status == S.WORKFLOW_STATUS_AWAITING_APPROVAL
    heartbeat = await stream.read()  # (its snapshot is the hub's too)
    assert heartbeat.HasField("heartbeat") and heartbeat.snapshot.status == S.WORKFLOW_STATUS_AWAITING_APPROVAL
    stream.cancel()
    assert asked == []
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # past the end: the row says so
        async for _ in stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow.workflow_id, after_sequence=9)):
            pass
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE and asked == [workflow.workflow_id]


async def test_a_watch_past_what_the_hub_has_published_reads_the_row(
    gateway: Gateway, stub: wpb_grpc.WorkflowServiceAsyncStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between an event's commit and its publish a client may have read the row (GetStatus):
    a watch from there is answered from the row, not refused as past the end."""
    workflow = await create(stub)
    monkeypatch.setattr(gateway.hub, "publish", lambda item: None)  # (the rejection's publish, held back)
    await stub.Reject(rejection(workflow), metadata=as_user("bob"))
    status = await stub.GetStatus(wpb.GetStatusRequest(workflow_id=workflow.workflow_id))
    assert status.status.last_sequence == 2 and gateway.hub.published(workflow.workflow_id) == 1
    request = wpb.WatchStatusRequest(workflow_id=workflow.workflow_id, after_sequence=2)
    call = stub.WatchStatus(request)
    assert [m async for m in call] == []  # the client saw the end: the stream ends at once
    assert await call.code() == grpc.StatusCode.OK


async def test_a_token_naming_an_unusable_principal_is_unauthenticated(stub: wpb_grpc.WorkflowServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await create(stub, user="a\x07bell")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert details(refused.value)["reason"] == "TOKEN_INVALID"


async def test_an_unexpected_error_is_internal_and_leaks_nothing(
    monkeypatch: pytest.MonkeyPatch, stub: wpb_grpc.WorkflowServiceAsyncStub
) -> None:
    from gateway import store

    def broken(*_args: object) -> None:
        raise RuntimeError("secret table layout")

    monkeypatch.setattr(store, "get", broken)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=UNKNOWN))
    assert refused.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (refused.value.details() or "")


async def test_the_creator_may_not_approve_but_may_withdraw(
    gateway: Gateway, stub: wpb_grpc.WorkflowServiceAsyncStub
) -> None:
    workflow = await create(stub, user="carol")
    before = dump_sqlite(db_path(gateway))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Approve(approval(workflow), metadata=as_user("carol"))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert details(refused.value)["reason"] == "SEPARATION_OF_DUTIES"
    assert dump_sqlite(db_path(gateway)) == before
    withdrawn = await stub.Reject(rejection(workflow, "withdrawn"), metadata=as_user("carol"))
    assert withdrawn.workflow.status == S.WORKFLOW_STATUS_REJECTED


async def test_an_unexpected_error_in_a_stream_is_internal_too(
    monkeypatch: pytest.MonkeyPatch, stub: wpb_grpc.WorkflowServiceAsyncStub
) -> None:
    from gateway import store

    workflow = await create(stub)

    def broken(*_args: object) -> None:
        raise RuntimeError("secret table layout")

    monkeypatch.setattr(store, "get", broken)
    # (past what the hub has published: the stream reads the workflow's row first)
    request = wpb.WatchStatusRequest(workflow_id=workflow.workflow_id, after_sequence=5)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.WatchStatus(request):
            pass
    assert refused.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (refused.value.details() or "")


async def test_watch_past_the_end_is_out_of_range_and_after_the_end_ends_at_once(
    stub: wpb_grpc.WorkflowServiceAsyncStub,
) -> None:
    workflow = await create(stub)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow.workflow_id, after_sequence=50)):
            pass
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert details(refused.value)["fields"] == ["after_sequence"]
    await stub.Reject(rejection(workflow), metadata=as_user("bob"))
    seen = [
        m async for m in stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow.workflow_id, after_sequence=2))
    ]
    assert seen == []  # the client saw the end already: the stream ends OK at once

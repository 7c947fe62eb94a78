"""Approval integrity: a decision bound to the plan's etag, N distinct approvers, and a trail
through both services' logs that VerifyTrail recomputes, tampering named by its event.

Every test runs on SQLite files and on PostgreSQL (a fresh database per service)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditflow import cli, trail
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway.server import Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from processor import store as processor_store
from processor.server import Processor
from processor.server import create_server as create_processor
from processor.settings import Settings as ProcessorSettings
from tests.support import auth
from tests.support.grpc_helpers import as_user, details, step

S = pb.WorkflowStatus
E = pb.EventType
C = grpc.StatusCode
PLUGINS = ("tests.support.procedures",)
# The etag of PLAN below, titled "etag", max_cycles 15, orchestrator "plan": fixed, so that a
# change of the canonical encoding (or a backend that stores the plan otherwise) is caught.
PLAN = [step("test_noop"), step("test_sleep", seconds=0.01)]
PLAN_ETAG = "b59fa2e6aae224e717b66f8f151d58a98f9ab3fa8d86886868155202abc62243"


@dataclass
class Pair:
    gateway: Gateway
    processor: Processor
    stub: wpb_grpc.WorkflowServiceAsyncStub
    urls: tuple[str, str]
    key: Path


def write_key(directory: Path) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    private, public = directory / "trail.pem", directory / "trail.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(trail.public_pem(key.public_key()))
    return private, public


@pytest.fixture
async def pair(database_urls: tuple[str, str], tmp_path: Path) -> AsyncIterator[Pair]:
    gateway_url, processor_url = database_urls
    private, public = write_key(tmp_path)
    processor = create_processor(
        "127.0.0.1:0",
        ProcessorSettings(
            **auth.processor_settings(),
            database_url=processor_url,
            plugins=PLUGINS,
            cycle_delay=0.01,
            poll_interval=0.05,
            heartbeat_interval=0.5,
            trail_signing_key=str(private),
        ),
    )
    await processor.start()
    gateway = create_gateway(
        "127.0.0.1:0",
        GatewaySettings(
            **auth.gateway_settings(),
            database_url=gateway_url,
            processor_target=processor.address,
            plugins=PLUGINS,
            heartbeat_interval=0.5,
            trail_public_keys=(str(public),),
            max_approvals=25,
        ),
    )
    await gateway.start()
    async with auth.channel(gateway.address) as channel:
        started = Pair(gateway, processor, wpb_grpc.WorkflowServiceStub(channel), database_urls, private)
        yield started
    await started.gateway.stop(0)  # (a test may have restarted it)
    await processor.stop(1)


async def create(pair: Pair, approvals: int = 0, plan: list[pb.PlanStep] | None = None) -> pb.Workflow:
    request = wpb.CreateWorkflowRequest(title="etag", plan=plan or PLAN, required_approvals=approvals)
    return (await pair.stub.CreateWorkflow(request, metadata=as_user("carol"))).workflow


async def approve(pair: Pair, workflow_id: str, who: str, etag: str) -> wpb.ApproveResponse:
    """An approval of the revision `etag` names (the one the approver read)."""
    request = wpb.ApproveRequest(workflow_id=workflow_id, etag=etag)
    return await pair.stub.Approve(request, metadata=as_user(who, ("approver",)))


async def refusal(call: object) -> tuple[C, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code(), details(caught.value)["reason"]


async def finished(pair: Pair, workflow_id: str) -> list[pb.WorkflowEvent]:
    events = []
    async for message in pair.stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id), timeout=60):
        if message.HasField("event"):
            events.append(message.event)
    return events


async def events_of(pair: Pair, workflow_id: str) -> list[pb.WorkflowEvent]:
    last = (await pair.stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=workflow_id))).workflow.last_sequence
    found = []
    call = pair.stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow_id))
    async for message in call:
        if message.HasField("event"):
            found.append(message.event)
            if message.event.sequence >= last:
                call.cancel()
                break
    return found


async def restart_gateway(pair: Pair) -> None:
    """Stop the gateway and start a new one on the same address and databases."""
    settings = pair.gateway.settings
    await pair.gateway.stop(0)
    pair.gateway = create_gateway(pair.gateway.address, settings)
    await pair.gateway.start()


# --- the etag --------------------------------------------------------------------------------


async def test_the_etag_is_the_plans_and_a_stale_one_is_refused_with_nothing_stored(pair: Pair) -> None:
    workflow = await create(pair)
    assert workflow.etag == trail.etag("etag", json.dumps(_plan_json(workflow), sort_keys=True), 15, "plan")
    assert workflow.etag == PLAN_ETAG  # the same on every backend, in every version
    other = await create(pair, plan=[step("test_noop")])
    assert other.etag != workflow.etag
    before = await events_of(pair, workflow.workflow_id)
    for wrong in (other.etag, "0" * 64):
        stale = (C.FAILED_PRECONDITION, "ETAG_MISMATCH")
        assert await refusal(approve(pair, workflow.workflow_id, "alice", wrong)) == stale
        reject = wpb.RejectRequest(workflow_id=workflow.workflow_id, comment="no", etag=wrong)
        assert await refusal(pair.stub.Reject(reject, metadata=as_user("alice"))) == stale
    malformed = await refusal(approve(pair, workflow.workflow_id, "alice", "not-an-etag"))
    assert malformed == (C.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    again = (await pair.stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=workflow.workflow_id))).workflow
    assert again.status == S.WORKFLOW_STATUS_AWAITING_APPROVAL and not again.approvals
    assert await events_of(pair, workflow.workflow_id) == before
    answer = await approve(pair, workflow.workflow_id, "alice", workflow.etag)
    assert answer.approved and answer.workflow.approvals[0].etag == workflow.etag
    events = await finished(pair, workflow.workflow_id)
    decided = [e for e in events if e.type == E.EVENT_TYPE_APPROVED]
    assert [(e.actor, e.etag) for e in decided] == [("alice", workflow.etag)]  # the trail says what was approved
    assert events[0].etag == workflow.etag


def _plan_json(workflow: pb.Workflow) -> list[dict[str, object]]:
    from auditflow import convert

    return json.loads(convert.plan_to_json(workflow.plan))  # type: ignore[no-any-return]


async def test_the_etag_survives_a_restart(pair: Pair) -> None:
    workflow = await create(pair)
    await restart_gateway(pair)
    async with auth.channel(pair.gateway.address) as channel:
        stub = wpb_grpc.WorkflowServiceStub(channel)
        again = (await stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=workflow.workflow_id))).workflow
    assert again.etag == workflow.etag == PLAN_ETAG


# --- N of M ---------------------------------------------------------------------------------


async def test_two_of_three_approvers_dispatch_on_the_second_distinct_one(pair: Pair) -> None:
    workflow = await create(pair, approvals=2)
    assert workflow.required_approvals == 2
    wid = workflow.workflow_id
    first = await approve(pair, wid, "alice", workflow.etag)
    assert not first.approved and first.workflow_status == S.WORKFLOW_STATUS_AWAITING_APPROVAL
    assert not first.background_processing_started and "1 of 2" in first.processing_message
    assert await refusal(approve(pair, wid, "carol", workflow.etag)) == (C.PERMISSION_DENIED, "SEPARATION_OF_DUTIES")
    repeated = await approve(pair, wid, "ALICE", workflow.etag)  # the same person, another spelling: not a second vote
    assert repeated.workflow.approvals == first.workflow.approvals
    got = (await pair.stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=wid))).workflow
    assert got.status == S.WORKFLOW_STATUS_AWAITING_APPROVAL and [a.approver for a in got.approvals] == ["alice"]
    assert await pair.processor.db.read(lambda conn: processor_store.get_run(conn, wid)) is None  # not dispatched
    second = await approve(pair, wid, "bob", workflow.etag)
    assert second.approved and [a.approver for a in second.workflow.approvals] == ["alice", "bob"]
    events = await finished(pair, wid)
    assert [e.type for e in events[:4]] == [
        E.EVENT_TYPE_CREATED,
        E.EVENT_TYPE_APPROVAL_RECORDED,
        E.EVENT_TYPE_APPROVED,
        E.EVENT_TYPE_QUEUED,
    ]
    assert events[-1].type == E.EVENT_TYPE_COMPLETED
    assert await refusal(approve(pair, wid, "dave", workflow.etag)) == (C.FAILED_PRECONDITION, "ALREADY_DECIDED")


async def test_a_reject_by_any_approver_ends_a_partly_approved_plan(pair: Pair) -> None:
    workflow = await create(pair, approvals=3)
    await approve(pair, workflow.workflow_id, "alice", workflow.etag)
    reject = wpb.RejectRequest(workflow_id=workflow.workflow_id, comment="no", etag=workflow.etag)
    rejected = (await pair.stub.Reject(reject, metadata=as_user("bob", ("approver",)))).workflow
    assert rejected.status == S.WORKFLOW_STATUS_REJECTED and rejected.decided_by == "bob"
    assert await refusal(approve(pair, workflow.workflow_id, "dave", workflow.etag)) == (
        C.FAILED_PRECONDITION,
        "ALREADY_DECIDED",
    )


async def test_twenty_concurrent_approvers_dispatch_exactly_once(pair: Pair) -> None:
    workflow = await create(pair, approvals=2)
    wid = workflow.workflow_id
    answers = await asyncio.gather(
        *(approve(pair, wid, f"approver-{i}", workflow.etag) for i in range(20)), return_exceptions=True
    )
    approved = [a for a in answers if isinstance(a, wpb.ApproveResponse) and a.approved]
    recorded = [a for a in answers if isinstance(a, wpb.ApproveResponse) and not a.approved]
    refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert len(approved) == 1 and len(recorded) == 1 and len(refused) == 18, answers
    assert {e.code() for e in refused} == {C.FAILED_PRECONDITION}
    events = await finished(pair, wid)
    assert [e.type for e in events].count(E.EVENT_TYPE_APPROVED) == 1
    assert [e.type for e in events].count(E.EVENT_TYPE_QUEUED) == 1
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


async def test_a_plan_asks_for_no_more_approvers_than_the_server_allows(pair: Pair) -> None:
    request = wpb.CreateWorkflowRequest(title="t", plan=PLAN, required_approvals=26)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pair.stub.CreateWorkflow(request, metadata=as_user("carol"))
    assert caught.value.code() == C.INVALID_ARGUMENT and details(caught.value)["fields"] == ["required_approvals"]


# --- the trail ------------------------------------------------------------------------------


async def verify(pair: Pair, workflow_id: str) -> wpb.VerifyTrailResponse:
    return await pair.stub.VerifyTrail(wpb.VerifyTrailRequest(workflow_id=workflow_id))


async def completed(pair: Pair) -> tuple[str, list[pb.WorkflowEvent]]:
    workflow = await create(pair, approvals=2)
    await approve(pair, workflow.workflow_id, "alice", workflow.etag)
    await approve(pair, workflow.workflow_id, "bob", workflow.etag)
    return workflow.workflow_id, await finished(pair, workflow.workflow_id)


async def test_a_completed_run_verifies_from_both_logs_and_its_result_pins_the_head(pair: Pair) -> None:
    wid, events = await completed(pair)
    checked = await verify(pair, wid)
    assert checked.intact and checked.problem == "" and checked.events_checked == len(events)
    assert (checked.head_sequence, checked.head_hash) == (events[-1].sequence, events[-1].hash)
    assert checked.signed and checked.signature_checked
    result = (await pair.stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=wid))).workflow.result
    assert result["trail"]["hash"] == checked.head_hash and int(result["trail"]["sequence"]) == events[-1].sequence
    assert trail.check(events).problem is None  # any client can recompute it from the stream
    waiting = await create(pair, approvals=2)
    await approve(pair, waiting.workflow_id, "alice", waiting.etag)
    state = await verify(pair, waiting.workflow_id)  # an unfinished trail: intact, not signed yet
    assert state.intact and not state.signed and state.events_checked == 2


def execute(url: str, sql: str, **params: object) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)
    engine.dispose()


@pytest.mark.parametrize(
    ("where", "sql", "sequence", "words"),
    [
        (
            "gateway",
            "UPDATE workflow_events SET message = 'approved by eve' WHERE workflow_id = :w AND sequence = 2",
            2,
            "does not match its hash",
        ),
        ("gateway", "DELETE FROM workflow_events WHERE workflow_id = :w AND sequence = 2", 2, "is missing"),
        (
            "gateway",
            "UPDATE workflows SET plan_json = replace(plan_json, 'test_sleep', 'test_noop') WHERE workflow_id = :w",
            0,
            "the stored plan does not match the etag",
        ),
        (
            "processor",
            "UPDATE run_events SET message = 'cycle 1 done, quietly' WHERE workflow_id = :w AND sequence = 6",
            6,
            "does not match its hash",
        ),
        ("processor", "DELETE FROM run_events WHERE workflow_id = :w AND sequence = 5", 5, "is missing"),
        (
            "processor",
            "UPDATE run_events SET sequence = sequence + 100 WHERE workflow_id = :w AND sequence = 4",
            4,
            "is missing",
        ),
        (
            "processor",
            "UPDATE run_events SET actor = 'mallory' WHERE workflow_id = :w AND sequence = 4",
            4,
            "does not match its hash",
        ),
        (
            "gateway",
            "UPDATE workflows SET result_json = replace(result_json, 'true', 'false') WHERE workflow_id = :w",
            0,
            "the result the gateway shows is not the run's",
        ),
    ],
)
async def test_tampering_in_either_database_is_named(
    pair: Pair, where: str, sql: str, sequence: int, words: str
) -> None:
    wid, _events = await completed(pair)
    assert (await verify(pair, wid)).intact
    execute(pair.urls[0] if where == "gateway" else pair.urls[1], sql, w=wid)
    checked = await verify(pair, wid)
    assert not checked.intact and checked.first_bad_sequence == sequence and words in checked.problem, checked


async def test_a_consistent_rewrite_of_the_processor_log_is_caught_by_the_signature(pair: Pair) -> None:
    """Whoever edits an event and recomputes every later hash keeps the chain whole; the
    signed end then no longer matches, and without the key it cannot be signed again."""
    wid, events = await completed(pair)
    engine = sa.create_engine(pair.urls[1])
    table = processor_store.run_events
    with engine.begin() as conn:
        conn.execute(sa.update(table).where(table.c.workflow_id == wid, table.c.sequence == 6).values(message="edited"))
        previous = events[4].hash  # the event before the edit
        rows = conn.execute(
            sa.select(table).where(table.c.workflow_id == wid, table.c.sequence >= 6).order_by(table.c.sequence)
        ).all()
        for row in rows:
            record = processor_store.EventRecord.from_row(row)
            digest = trail.link(previous, record.content())
            conn.execute(
                sa.update(table)
                .where(table.c.workflow_id == wid, table.c.sequence == record.sequence)
                .values(hash=digest)
            )
            previous = digest
    engine.dispose()
    checked = await verify(pair, wid)
    assert not checked.intact and checked.first_bad_sequence == events[-1].sequence
    assert "signature" in checked.problem and "rewritten" in checked.problem


async def test_lone_approvals_of_many_workflows_each_link_to_their_own_trail(pair: Pair) -> None:
    # The one-statement approval finds the event before it in the same UPDATE: with several
    # workflows in the database, each approval must link to its own workflow's event.
    created = [await create(pair) for _ in range(4)]
    await asyncio.gather(*(approve(pair, w.workflow_id, "alice", w.etag) for w in reversed(created)))
    for workflow in created:
        events = await finished(pair, workflow.workflow_id)
        checked = await verify(pair, workflow.workflow_id)
        assert checked.intact, checked
        assert trail.check(events).problem is None and checked.head_hash == events[-1].hash


async def test_the_cli_verifies_on_the_server_and_by_itself(
    pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wid, events = await completed(pair)
    token = tmp_path / "viewer.token"
    token.write_text(auth.jwt_for("victor", ("viewer",)))
    public = tmp_path / "trail.pub"
    base = ["--target", pair.gateway.address, "--token-file", str(token), "verify", wid, "--public-key", str(public)]
    assert await asyncio.to_thread(cli.main, base) == 0
    out = capsys.readouterr().out
    assert f"server: trail intact, {len(events)} events" in out and ": valid" in out
    assert f"here:   {len(events)} events recomputed, head #{events[-1].sequence} {events[-1].hash}" in out
    execute(pair.urls[1], "UPDATE run_events SET message = 'x' WHERE workflow_id = :w AND sequence = 5", w=wid)
    assert await asyncio.to_thread(cli.main, base) == 1
    out = capsys.readouterr().out
    # The replay here came from the gateway's memory (the events as they were delivered), so
    # the copy here is intact and its head is not the server's: both are said, and it fails.
    assert "server: TRAIL BROKEN at event 5" in out and "the server's head and the one recomputed here differ" in out
    await restart_gateway(pair)  # now the replay reads the processor's log, as edited
    base[1] = pair.gateway.address
    assert await asyncio.to_thread(cli.main, base) == 1
    out = capsys.readouterr().out
    assert "server: TRAIL BROKEN at event 5" in out and "here:   TRAIL BROKEN at event 5" in out


async def test_one_person_cannot_count_twice_toward_n_of_m_by_spelling_their_name(pair: Pair) -> None:
    workflow = await create(pair, approvals=2)
    wid = workflow.workflow_id
    await approve(pair, wid, "alice", workflow.etag)
    full_width = ("\uff41\uff4c\uff49\uff43\uff45", "\uff21\uff2c\uff29\uff23\uff25")  # alice, ALICE
    for spelling in full_width:  # the same name after NFKC
        repeated = await approve(pair, wid, spelling, workflow.etag)
        assert [a.approver for a in repeated.workflow.approvals] == ["alice"], spelling
    # a Cyrillic a (U+0430) for the Latin one: refused when the credential is read, before any vote
    assert await refusal(approve(pair, wid, "\u0430lice", workflow.etag)) == (C.UNAUTHENTICATED, "TOKEN_INVALID")
    got = (await pair.stub.GetWorkflow(wpb.GetWorkflowRequest(workflow_id=wid))).workflow
    assert got.status == S.WORKFLOW_STATUS_AWAITING_APPROVAL and [a.approver for a in got.approvals] == ["alice"]

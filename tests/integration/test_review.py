"""Review before approval, on the server: data files fingerprinted at submission and checked
before a step reads them, revisions that dismiss stale approvals, requests for changes, the
list's filters and the list-then-watch stream of workflows (WatchWorkflows, gRPC and SSE).

Every test runs on SQLite files and on PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest

from auditflow import cli
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from auditflow.v1 import workflow_service_pb2_grpc as wpb_grpc
from gateway.server import Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from processor.server import Processor
from processor.server import create_server as create_processor
from processor.settings import Settings as ProcessorSettings
from tests.support import auth
from tests.support.grpc_helpers import as_user, details, ledger_step, step

S = pb.WorkflowStatus
E = pb.EventType
C = grpc.StatusCode
SAMPLE = Path(__file__).resolve().parents[2] / "auditflow" / "samples" / "ledger.csv"
PLUGINS = ("tests.support.procedures",)


@dataclass
class Pair:
    gateway: Gateway
    processor: Processor
    stub: wpb_grpc.WorkflowServiceAsyncStub
    data: Path
    rest: str


@pytest.fixture
async def pair(database_urls: tuple[str, str], tmp_path: Path) -> AsyncIterator[Pair]:
    gateway_url, processor_url = database_urls
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(SAMPLE, data / "ledger.csv")
    processor = create_processor(
        "127.0.0.1:0",
        ProcessorSettings(
            **auth.processor_settings(),
            database_url=processor_url,
            plugins=PLUGINS,
            cycle_delay=0.0,
            poll_interval=0.05,
            heartbeat_interval=0.5,
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
            rest_port=0,
            max_approvals=5,
            replica_poll_interval=0.2,
        ),
    )
    await gateway.start()
    assert gateway.rest is not None
    async with auth.channel(gateway.address) as channel:
        yield Pair(gateway, processor, wpb_grpc.WorkflowServiceStub(channel), data, gateway.rest.url)
    await gateway.stop(0)
    await processor.stop(1)


async def submit(
    pair: Pair, plan: list[pb.PlanStep], *, who: str = "carol", approvals: int = 1, title: str = "review"
) -> pb.Workflow:
    request = wpb.CreateWorkflowRequest(title=title, plan=plan, max_cycles=30, required_approvals=approvals)
    return (await pair.stub.CreateWorkflow(request, metadata=as_user(who))).workflow


async def get(pair: Pair, workflow_id: str, who: str = "alice") -> pb.Workflow:
    request = wpb.GetWorkflowRequest(workflow_id=workflow_id)
    return (await pair.stub.GetWorkflow(request, metadata=as_user(who))).workflow


async def approve(pair: Pair, workflow: pb.Workflow, who: str = "alice") -> wpb.ApproveResponse:
    request = wpb.ApproveRequest(workflow_id=workflow.workflow_id, etag=workflow.etag)
    return await pair.stub.Approve(request, metadata=as_user(who))


async def refusal(call: object) -> tuple[grpc.StatusCode, dict[str, object]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code(), details(caught.value)


async def finished(pair: Pair, workflow_id: str) -> pb.StatusSnapshot:
    async for message in pair.stub.WatchStatus(
        wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=as_user("victor", ("viewer",)), timeout=120
    ):
        if message.snapshot.is_completed:
            return message.snapshot
    raise AssertionError("the stream ended before the run")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- fingerprints --------------------------------------------------------------------------------


async def test_each_data_file_is_fingerprinted_into_the_plan_and_its_etag(pair: Pair) -> None:
    ledger = pair.data / "ledger.csv"
    workflow = await submit(pair, [ledger_step(pair.data / "ledger.csv"), step("test_noop")])
    [source] = workflow.plan[0].sources
    assert (source.parameter, source.path) == ("path", str(ledger))
    assert source.sha256 == sha256(ledger) and source.size_bytes == ledger.stat().st_size
    assert source.modified_at.ToNanoseconds() == ledger.stat().st_mtime_ns
    assert not workflow.plan[1].sources and not source.changed
    # The fingerprint is part of what the etag covers: the same plan on other bytes differs.
    other = await submit(pair, [ledger_step(pair.data / "ledger.csv"), step("test_noop")])
    assert other.etag == workflow.etag
    with ledger.open("a") as handle:
        handle.write("\n")
    changed = await submit(pair, [ledger_step(pair.data / "ledger.csv"), step("test_noop")])
    assert changed.etag != workflow.etag
    # And it is in the trail: verified against the CREATED event's etag.
    verified = await pair.stub.VerifyTrail(
        wpb.VerifyTrailRequest(workflow_id=workflow.workflow_id), metadata=as_user("alice")
    )
    assert verified.intact, verified.problem


async def test_a_data_file_that_cannot_be_read_is_refused_at_submission_naming_the_parameter(pair: Pair) -> None:
    code, found = await refusal(submit(pair, [step("test_noop"), ledger_step(pair.data / "missing.csv")]))
    assert code == C.INVALID_ARGUMENT
    assert "plan[1].parameters.path" in found["fields"], found  # type: ignore[operator]


async def test_approvers_are_warned_of_a_file_changed_before_approval(pair: Pair) -> None:
    ledger = pair.data / "ledger.csv"
    workflow = await submit(pair, [ledger_step(pair.data / "ledger.csv")])
    assert not (await get(pair, workflow.workflow_id)).plan[0].sources[0].changed
    ledger.write_bytes(ledger.read_bytes().replace(b"1", b"2", 1))
    warned = (await get(pair, workflow.workflow_id)).plan[0].sources[0]
    assert warned.changed.startswith("changed") and sha256(ledger) in warned.changed
    assert warned.sha256 == workflow.plan[0].sources[0].sha256  # the approved fingerprint stays shown


async def test_a_file_changed_after_approval_fails_the_run_naming_it_and_both_digests(pair: Pair) -> None:
    ledger = pair.data / "ledger.csv"
    approved = sha256(ledger)
    # The first step waits, so that the file is changed after approval but before the step reads it.
    gate = pair.data.parent / "gate"
    plan = [
        step("test_wait_for_file", path=str(gate)),
        ledger_step(pair.data / "ledger.csv"),
        step("round_amounts", path=str(pair.data / "ledger.csv")),
    ]
    workflow = await submit(pair, plan)
    await approve(pair, workflow)
    ledger.write_bytes(ledger.read_bytes().replace(b"1", b"3", 1))
    gate.write_text("go")
    snapshot = await finished(pair, workflow.workflow_id)
    assert snapshot.status == S.WORKFLOW_STATUS_FAILED
    assert snapshot.error.reason == "CRITICAL_ERROR"
    assert "ledger.csv" in snapshot.error.message
    assert approved in snapshot.error.message and sha256(ledger) in snapshot.error.message
    found = await pair.stub.ListFindings(
        wpb.ListFindingsRequest(workflow_id=workflow.workflow_id), metadata=as_user("alice")
    )
    assert found.total == 0


async def test_an_unchanged_file_runs(pair: Pair) -> None:
    workflow = await submit(
        pair, [ledger_step(pair.data / "ledger.csv"), step("round_amounts", path=str(pair.data / "ledger.csv"))]
    )
    await approve(pair, workflow)
    snapshot = await finished(pair, workflow.workflow_id)
    assert snapshot.status == S.WORKFLOW_STATUS_COMPLETED, snapshot.error.message


# --- revisions and requests for changes ------------------------------------------------------------


async def test_a_revision_dismisses_earlier_approvals_and_says_so_in_the_trail(pair: Pair) -> None:
    workflow = await submit(pair, [step("test_noop")], approvals=2)
    await approve(pair, workflow, "alice")
    revise = wpb.ReviseWorkflowRequest(
        workflow_id=workflow.workflow_id,
        etag=workflow.etag,
        reason="one more step",
        plan=[step("test_noop"), step("test_sleep", seconds=0.01)],
    )
    answer = await pair.stub.ReviseWorkflow(revise, metadata=as_user("carol"))
    revised = answer.workflow
    assert list(answer.dismissed_approvers) == ["alice"]
    assert (revised.revision, len(revised.approvals), revised.status) == (2, 0, S.WORKFLOW_STATUS_AWAITING_APPROVAL)
    assert revised.etag != workflow.etag
    # The old etag is stale now: FAILED_PRECONDITION, nothing stored.
    code, found = await refusal(approve(pair, workflow, "bob"))
    assert (code, found["reason"]) == (C.FAILED_PRECONDITION, "ETAG_MISMATCH")
    verified = await pair.stub.VerifyTrail(
        wpb.VerifyTrailRequest(workflow_id=workflow.workflow_id), metadata=as_user("alice")
    )
    assert verified.intact, verified.problem
    assert verified.events_checked == 3  # CREATED, APPROVAL_RECORDED, REVISED
    # Two approvals of the new revision complete it.
    await approve(pair, revised, "alice")
    done = await approve(pair, revised, "bob")
    assert done.approved
    # Revision 1 is kept, and the diff names what changed.
    diff = await pair.stub.GetRevision(
        wpb.GetRevisionRequest(workflow_id=workflow.workflow_id, revision=2, compare_to=1), metadata=as_user("alice")
    )
    assert diff.current_revision == 2 and diff.revision.reason == "one more step"
    assert [(c.field, c.kind) for c in diff.changes] == [("plan[1]", "added")]
    first = await pair.stub.GetRevision(
        wpb.GetRevisionRequest(workflow_id=workflow.workflow_id, revision=1), metadata=as_user("alice")
    )
    assert first.revision.etag == workflow.etag and len(first.revision.plan) == 1


async def test_only_the_submitter_revises_and_only_before_a_decision(pair: Pair) -> None:
    workflow = await submit(pair, [step("test_noop")])
    revise = wpb.ReviseWorkflowRequest(workflow_id=workflow.workflow_id, etag=workflow.etag, title="mine now")
    code, found = await refusal(pair.stub.ReviseWorkflow(revise, metadata=as_user("alice")))
    assert (code, found["reason"]) == (C.PERMISSION_DENIED, "NOT_OWNER")
    await approve(pair, workflow)
    code, _ = await refusal(pair.stub.ReviseWorkflow(revise, metadata=as_user("carol")))
    assert code == C.FAILED_PRECONDITION
    code, found = await refusal(
        pair.stub.ReviseWorkflow(wpb.ReviseWorkflowRequest(workflow_id=workflow.workflow_id), metadata=as_user("carol"))
    )
    assert (code, found["fields"]) == (C.INVALID_ARGUMENT, ["etag"])


async def test_refreshing_the_data_fingerprint_is_a_revision(pair: Pair) -> None:
    ledger = pair.data / "ledger.csv"
    workflow = await submit(pair, [ledger_step(pair.data / "ledger.csv")], approvals=2)
    await approve(pair, workflow, "alice")
    ledger.write_bytes(ledger.read_bytes() + b"\n")
    refresh = wpb.ReviseWorkflowRequest(workflow_id=workflow.workflow_id, etag=workflow.etag, reason="new export")
    answer = await pair.stub.ReviseWorkflow(refresh, metadata=as_user("carol"))
    assert answer.workflow.plan[0].sources[0].sha256 == sha256(ledger)
    assert list(answer.dismissed_approvers) == ["alice"] and not answer.workflow.approvals
    assert not (await get(pair, workflow.workflow_id)).plan[0].sources[0].changed
    diff = await pair.stub.GetRevision(
        wpb.GetRevisionRequest(workflow_id=workflow.workflow_id, compare_to=1), metadata=as_user("alice")
    )
    fields = {c.field for c in diff.changes}
    assert {"plan[0].sources[0].sha256", "plan[0].sources[0].size_bytes"} <= fields


async def test_a_request_for_changes_waits_for_a_revision(pair: Pair) -> None:
    workflow = await submit(pair, [step("test_noop")])
    ask = wpb.RequestChangesRequest(workflow_id=workflow.workflow_id, etag=workflow.etag, reason="")
    code, found = await refusal(pair.stub.RequestChanges(ask, metadata=as_user("alice")))
    assert (code, found["fields"]) == (C.INVALID_ARGUMENT, ["reason"])
    ask.reason = "use the March ledger"
    code, found = await refusal(pair.stub.RequestChanges(ask, metadata=as_user("carol")))  # the submitter
    assert (code, found["reason"]) == (C.PERMISSION_DENIED, "SEPARATION_OF_DUTIES")
    waiting = (await pair.stub.RequestChanges(ask, metadata=as_user("alice"))).workflow
    assert waiting.status == S.WORKFLOW_STATUS_CHANGES_REQUESTED
    assert (waiting.changes_requested.requested_by, waiting.changes_requested.reason) == ("alice", ask.reason)
    code, _ = await refusal(approve(pair, workflow, "bob"))
    assert code == C.FAILED_PRECONDITION
    revise = wpb.ReviseWorkflowRequest(workflow_id=workflow.workflow_id, etag=workflow.etag, title="March")
    revised = (await pair.stub.ReviseWorkflow(revise, metadata=as_user("carol"))).workflow
    assert revised.status == S.WORKFLOW_STATUS_AWAITING_APPROVAL and not revised.HasField("changes_requested")
    assert (await approve(pair, revised, "bob")).approved


# --- lists and the collection watch ---------------------------------------------------------------


async def listed(pair: Pair, who: str, roles: tuple[str, ...] = auth.DEFAULT_ROLES, **filters: object) -> list[str]:
    request = wpb.ListWorkflowsRequest(**filters)  # type: ignore[arg-type]
    answer = await pair.stub.ListWorkflows(request, metadata=as_user(who, roles))
    return [w.workflow_id for w in answer.workflows]


async def test_awaiting_my_approval_lists_exactly_what_each_caller_may_approve(pair: Pair) -> None:
    by_carol = await submit(pair, [step("test_noop")], who="carol", approvals=2)
    by_alice = await submit(pair, [step("test_noop")], who="alice")
    await approve(pair, by_carol, "alice")
    assert await listed(pair, "alice", awaiting_my_approval=True) == []  # own plan; already approved
    assert await listed(pair, "bob", awaiting_my_approval=True) == [by_alice.workflow_id, by_carol.workflow_id]
    assert await listed(pair, "carol", awaiting_my_approval=True) == [by_alice.workflow_id]
    assert await listed(pair, "victor", ("viewer",), awaiting_my_approval=True) == []
    assert await listed(pair, "carol", created_by_me=True) == [by_carol.workflow_id]
    assert await listed(pair, "victor", ("viewer",), title_contains="REV") == [
        by_alice.workflow_id,
        by_carol.workflow_id,
    ]


async def test_watch_workflows_lists_then_streams_changes_and_resumes(pair: Pair) -> None:
    first = await submit(pair, [step("test_noop")], title="first")
    stream = pair.stub.WatchWorkflows(
        wpb.WatchWorkflowsRequest(awaiting_my_approval=True), metadata=as_user("bob"), timeout=60
    )
    messages = aiter(stream)
    added = await anext(messages)
    assert (added.change.type, added.change.workflow.workflow_id) == (wpb.CHANGE_TYPE_ADDED, first.workflow_id)
    assert not added.change.workflow.plan[0].HasField("parameters")
    assert (await anext(messages)).HasField("synced")
    second = await submit(pair, [step("test_noop")], title="second")
    change = await _next_change(messages)
    assert (change.change.type, change.change.workflow.workflow_id) == (wpb.CHANGE_TYPE_ADDED, second.workflow_id)
    token = change.resume_token
    await approve(pair, first, "alice")  # approved: no longer awaits bob's approval
    removed = await _next_change(messages)
    assert (removed.change.type, removed.change.workflow.workflow_id) == (wpb.CHANGE_TYPE_REMOVED, first.workflow_id)
    stream.cancel()
    # Resumed from the token: what changed since (first approved) comes again, at least once.
    resumed = pair.stub.WatchWorkflows(
        wpb.WatchWorkflowsRequest(resume_token=token), metadata=as_user("bob"), timeout=60
    )
    seen: set[str] = set()
    async for message in resumed:
        if message.HasField("heartbeat"):
            break
        seen.add(message.change.workflow.workflow_id)
    resumed.cancel()
    assert first.workflow_id in seen


async def _next_change(messages: AsyncIterator[wpb.WatchWorkflowsResponse]) -> wpb.WatchWorkflowsResponse:
    while True:
        message = await asyncio.wait_for(anext(messages), 30)
        if message.HasField("change"):
            return message


async def test_a_change_through_another_gateway_reaches_the_watch(pair: Pair, database_urls: tuple[str, str]) -> None:
    other = create_gateway(
        "127.0.0.1:0",
        GatewaySettings(
            **auth.gateway_settings(),
            database_url=database_urls[0],
            processor_target=pair.processor.address,
            plugins=PLUGINS,
        ),
    )
    await other.start()
    try:
        stream = pair.stub.WatchWorkflows(wpb.WatchWorkflowsRequest(), metadata=as_user("bob"), timeout=60)
        messages = aiter(stream)
        assert (await anext(messages)).HasField("synced")
        async with auth.channel(other.address) as channel:
            elsewhere = wpb_grpc.WorkflowServiceStub(channel)
            request = wpb.CreateWorkflowRequest(title="elsewhere", plan=[step("test_noop")])
            created = (await elsewhere.CreateWorkflow(request, metadata=as_user("carol"))).workflow
        change = await _next_change(messages)
        assert change.change.workflow.workflow_id == created.workflow_id
        stream.cancel()
    finally:
        await other.stop(0)


async def test_watch_workflows_over_sse(pair: Pair) -> None:
    workflow = await submit(pair, [step("test_noop")], title="sse")
    url = f"{pair.rest}/workflows:watch?awaiting_my_approval=true"
    async with (
        aiohttp.ClientSession(headers=auth.headers("bob"), timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.get(url) as response,
    ):
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        data: list[dict[str, object]] = []
        async for line in response.content:
            text = line.decode().strip()
            if text.startswith("data: "):
                data.append(json.loads(text[6:]))
                if "synced" in data[-1]:
                    break
    assert data[0]["change"]["workflow"]["workflow_id"] == workflow.workflow_id  # type: ignore[index]
    assert data[0]["change"]["type"] == "CHANGE_TYPE_ADDED"  # type: ignore[index]
    async with (
        aiohttp.ClientSession(headers=auth.headers("bob")) as http,
        http.get(f"{pair.rest}/workflows:watch?resume_token=%%%") as response,
    ):
        assert response.status == 400


async def test_the_cli_revises_asks_for_changes_and_lists_a_queue(
    pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workflow = await submit(pair, [step("test_noop")], approvals=2)
    tokens = {name: tmp_path / f"{name}.token" for name in ("carol", "alice", "bob")}
    for name, path in tokens.items():
        path.write_text(auth.jwt_for(name))

    def cli_as(name: str, *args: str) -> list[str]:
        return ["--target", pair.gateway.address, "--token-file", str(tokens[name]), *args]

    ask = cli_as(
        "alice", "request-changes", workflow.workflow_id, "--reason", "use March", "--etag", workflow.etag, "--yes"
    )
    assert await asyncio.to_thread(cli.main, ask) == 0
    assert (await get(pair, workflow.workflow_id)).status == S.WORKFLOW_STATUS_CHANGES_REQUESTED
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"procedure": "test_noop"}, {"procedure": "test_noop"}]))
    revise = cli_as("carol", "revise", workflow.workflow_id, "--plan", str(plan), "--reason", "March")
    assert await asyncio.to_thread(cli.main, revise) == 0
    revised = await get(pair, workflow.workflow_id)
    assert (revised.revision, len(revised.plan), revised.status) == (2, 2, S.WORKFLOW_STATUS_AWAITING_APPROVAL)
    assert f"revision 2, etag {revised.etag}" in capsys.readouterr().out
    assert await asyncio.to_thread(cli.main, cli_as("bob", "list", "--awaiting-me")) == 0
    assert workflow.workflow_id in capsys.readouterr().out
    assert await asyncio.to_thread(cli.main, cli_as("carol", "list", "--awaiting-me")) == 0
    assert workflow.workflow_id not in capsys.readouterr().out  # one's own plan

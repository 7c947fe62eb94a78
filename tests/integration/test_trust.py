"""Trust, on real servers on real ports: who may call what (role by RPC, for both services),
forged identities, separation of duties by authenticated principal, inputs bounded before use
on both databases, mutual TLS between the services, TLS for clients, and credentials that
change without a restart."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from auditflow.auth.settings import AuthSettings
from auditflow.auth.tokens import append_entry
from auditflow.config import ConfigError
from auditflow.tls import ClientTls, TlsFiles
from auditflow.v1 import processor_service_pb2 as ps
from auditflow.v1 import processor_service_pb2_grpc as ps_grpc
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
from tests.support.grpc_helpers import as_user, details, dump_sqlite, free_port, step
from tests.support.tls import CertificateAuthority

S = pb.WorkflowStatus
C = grpc.StatusCode
PLUGINS = ("tests.support.procedures",)
SAMPLE = "ledger.csv"  # (under the packaged samples, a data root of the test servers)
ROLES: dict[str, tuple[str, ...] | None] = {
    "nobody": None,
    "viewer": ("viewer",),
    "submitter": ("submitter",),
    "approver": ("approver",),
    "admin": ("admin",),
}


def creds(role: str, name: str | None = None) -> tuple[tuple[str, str], ...]:
    roles = ROLES[role]
    return () if roles is None else auth.bearer(name or f"the-{role}", roles)


@dataclass
class Pair:
    gateway: Gateway
    processor: Processor
    channel: grpc.aio.Channel
    stub: wpb_grpc.WorkflowServiceAsyncStub


async def start_pair(gateway_url: str, processor_url: str, **gateway_overrides: Any) -> tuple[Gateway, Processor]:
    processor = create_processor(
        "127.0.0.1:0",
        ProcessorSettings(
            **{**auth.processor_settings(), "auth": AuthSettings(tokens_file=str(auth.PROCESSOR_TOKENS), **_jwt())},
            database_url=processor_url,
            plugins=PLUGINS,
            cycle_delay=0.01,
            poll_interval=0.05,
        ),
    )
    await processor.start()
    gateway = create_gateway(
        "127.0.0.1:0",
        GatewaySettings(
            **{**auth.gateway_settings(), **gateway_overrides},
            database_url=gateway_url,
            processor_target=processor.address,
            plugins=PLUGINS,
            heartbeat_interval=0.3,
        ),
    )
    await gateway.start()
    return gateway, processor


def _jwt() -> dict[str, str]:
    """The processor also knows the test issuer: a person's JWT is then a valid credential
    there, and must still be refused for want of the gateway role."""
    return {"jwks_file": str(auth.JWKS_FILE), "jwt_issuer": auth.ISSUER, "jwt_audience": auth.AUDIENCE}


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    gateway, processor = await start_pair(f"sqlite:///{tmp_path / 'g.db'}", f"sqlite:///{tmp_path / 'p.db'}")
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        yield Pair(gateway, processor, channel, wpb_grpc.WorkflowServiceStub(channel))
    await gateway.stop(0)
    await processor.stop(1)


async def create(stub: wpb_grpc.WorkflowServiceAsyncStub, owner: str = "owner", **fields: Any) -> pb.Workflow:
    request = wpb.CreateWorkflowRequest(title="t", plan=[step("test_noop")], **fields)
    return (await stub.CreateWorkflow(request, metadata=auth.bearer(owner, ("submitter",)))).workflow


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        result = call
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    except grpc.aio.AioRpcError as error:
        return error.code()
    return C.OK


# --- who may call what ---------------------------------------------------------------------

D = C.PERMISSION_DENIED
U = C.UNAUTHENTICATED
GATEWAY_TABLE: dict[str, dict[str, grpc.StatusCode]] = {
    #                 nobody, viewer, submitter, approver, admin
    "GetWorkflow": dict(zip(ROLES, (U, C.OK, C.OK, C.OK, C.OK), strict=True)),
    "GetStatus": dict(zip(ROLES, (U, C.OK, C.OK, C.OK, C.OK), strict=True)),
    "ListWorkflows": dict(zip(ROLES, (U, C.OK, C.OK, C.OK, C.OK), strict=True)),
    "WatchStatus": dict(zip(ROLES, (U, C.OK, C.OK, C.OK, C.OK), strict=True)),
    "ListFindings": dict(zip(ROLES, (U, C.OK, C.OK, C.OK, C.OK), strict=True)),
    "ExportFindings": dict(zip(ROLES, (U, C.OK, C.OK, C.OK, C.OK), strict=True)),
    "VerifyTrail": dict(zip(ROLES, (U, C.OK, C.OK, C.OK, C.OK), strict=True)),
    "WhoAmI": dict(zip(ROLES, (U, C.OK, C.OK, C.OK, C.OK), strict=True)),
    "CreateWorkflow": dict(zip(ROLES, (U, D, C.OK, C.OK, C.OK), strict=True)),
    "Approve": dict(zip(ROLES, (U, D, D, C.OK, C.OK), strict=True)),
    "Reject": dict(zip(ROLES, (U, D, D, C.OK, C.OK), strict=True)),
    # someone else's workflow: only an admin may cancel it
    "CancelWorkflow": dict(zip(ROLES, (U, D, D, D, C.OK), strict=True)),
    "RequestChanges": dict(zip(ROLES, (U, D, D, C.OK, C.OK), strict=True)),
    # someone else's plan: only its submitter revises it, an admin neither
    "ReviseWorkflow": dict(zip(ROLES, (U, D, D, D, D), strict=True)),
    "GetRevision": dict(zip(ROLES, (U, C.OK, C.OK, C.OK, C.OK), strict=True)),
    "WatchWorkflows": dict(zip(ROLES, (U, C.OK, C.OK, C.OK, C.OK), strict=True)),
}


def test_the_table_covers_every_rpc_of_the_public_service() -> None:
    assert set(GATEWAY_TABLE) == {m.name for m in wpb.DESCRIPTOR.services_by_name["WorkflowService"].methods}


@pytest.mark.parametrize("rpc", sorted(GATEWAY_TABLE))
async def test_role_by_rpc_on_the_gateway(pair: Pair, rpc: str) -> None:
    for role, expected in GATEWAY_TABLE[rpc].items():
        created = await create(pair.stub)  # by "owner", awaiting approval
        workflow_id = created.workflow_id
        requests: dict[str, Any] = {
            "GetWorkflow": wpb.GetWorkflowRequest(workflow_id=workflow_id),
            "GetStatus": wpb.GetStatusRequest(workflow_id=workflow_id),
            "ListWorkflows": wpb.ListWorkflowsRequest(page_size=1),
            "WatchStatus": wpb.WatchStatusRequest(workflow_id=workflow_id, after_sequence=0),
            "WhoAmI": wpb.WhoAmIRequest(),
            "ListFindings": wpb.ListFindingsRequest(workflow_id=workflow_id),
            "ExportFindings": wpb.ExportFindingsRequest(workflow_id=workflow_id, format="json"),
            "VerifyTrail": wpb.VerifyTrailRequest(workflow_id=workflow_id),
            "CreateWorkflow": wpb.CreateWorkflowRequest(title="t", plan=[step("test_noop")]),
            "Approve": wpb.ApproveRequest(workflow_id=workflow_id, etag=created.etag),
            "Reject": wpb.RejectRequest(workflow_id=workflow_id, etag=created.etag, comment="no"),
            "CancelWorkflow": wpb.CancelWorkflowRequest(workflow_id=workflow_id),
            "RequestChanges": wpb.RequestChangesRequest(workflow_id=workflow_id, etag=created.etag, reason="why"),
            "ReviseWorkflow": wpb.ReviseWorkflowRequest(workflow_id=workflow_id, etag=created.etag, title="t2"),
            "GetRevision": wpb.GetRevisionRequest(workflow_id=workflow_id, revision=1),
            "WatchWorkflows": wpb.WatchWorkflowsRequest(page_size=1),
        }
        if rpc == "WatchStatus" and expected == C.OK:  # ends only with the workflow: read one message
            call = pair.stub.WatchStatus(requests[rpc], metadata=creds(role))
            assert (await call.read()).event.sequence == 1
            call.cancel()
            continue
        if rpc == "WatchWorkflows" and expected == C.OK:  # never ends: read the list's first row
            call = pair.stub.WatchWorkflows(requests[rpc], metadata=creds(role))
            assert (await call.read()).change.workflow.workflow_id
            call.cancel()
            continue
        got = await code_of(getattr(pair.stub, rpc)(requests[rpc], metadata=creds(role)))
        assert got == expected, (rpc, role)


async def test_refusals_say_why_and_change_nothing(pair: Pair) -> None:
    created = await create(pair.stub)
    workflow_id = created.workflow_id
    database = pair.gateway.settings.database_url.removeprefix("sqlite:///")
    before = dump_sqlite(database)
    for role, request, reason in (
        ("nobody", wpb.ApproveRequest(workflow_id=workflow_id, etag=created.etag), "CREDENTIALS_MISSING"),
        ("viewer", wpb.ApproveRequest(workflow_id=workflow_id, etag=created.etag), "ROLE_REQUIRED"),
        ("submitter", wpb.CancelWorkflowRequest(workflow_id=workflow_id), "NOT_OWNER"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            rpc = "Approve" if isinstance(request, wpb.ApproveRequest) else "CancelWorkflow"
            await getattr(pair.stub, rpc)(request, metadata=creds(role))
        assert details(refused.value)["reason"] == reason
    assert dump_sqlite(database) == before


async def test_a_submitter_cancels_their_own_workflow(pair: Pair) -> None:
    workflow_id = (await create(pair.stub, owner="Sam")).workflow_id
    mine = auth.bearer("sam", ("submitter",))  # the same person, cased differently by another issuer
    answer = await pair.stub.CancelWorkflow(wpb.CancelWorkflowRequest(workflow_id=workflow_id), metadata=mine)
    assert answer.workflow.status == S.WORKFLOW_STATUS_CANCELLED


PROCESSOR_RPCS = {m.name for m in ps.DESCRIPTOR.services_by_name["ProcessorService"].methods}


async def test_role_by_rpc_on_the_processor(pair: Pair) -> None:
    assert {"Enqueue", "CancelRun", "GetRun", "WatchStatus", "Follow", "ReadEvents", "ListFindings"} == PROCESSOR_RPCS
    workflow_id = "wf_" + "ab" * 16
    requests: dict[str, Any] = {
        "Enqueue": ps.EnqueueRequest(
            workflow_id=workflow_id, title="t", plan=[step("test_noop")], base_sequence=2, approved_by="alice"
        ),
        "CancelRun": ps.CancelRunRequest(workflow_id=workflow_id, requested_by="alice"),
        "GetRun": ps.GetRunRequest(workflow_id=workflow_id),
        "WatchStatus": ps.ProcessorServiceWatchStatusRequest(workflow_id="wf_" + "cd" * 16),
        "Follow": ps.FollowRequest(),
        "ReadEvents": ps.ReadEventsRequest(cursors=[ps.FeedCursor(workflow_id=workflow_id)]),
        "ListFindings": ps.ProcessorServiceListFindingsRequest(workflow_id=workflow_id),
    }
    gateway_token = (("authorization", f"Bearer {auth.GATEWAY_TOKEN}"),)
    async with grpc.aio.insecure_channel(pair.processor.address) as channel:
        stub = ps_grpc.ProcessorServiceStub(channel)
        for rpc in sorted(PROCESSOR_RPCS):
            assert await code_of(getattr(stub, rpc)(requests[rpc])) == U, rpc
            for role in ("viewer", "approver", "admin"):  # valid credentials of people: refused
                assert await code_of(getattr(stub, rpc)(requests[rpc], metadata=creds(role))) == D, (rpc, role)
            forged = (("x-auditflow-user", "gateway"),)
            assert await code_of(getattr(stub, rpc)(requests[rpc], metadata=forged)) == U, rpc
        assert await code_of(stub.Enqueue(requests["Enqueue"], metadata=gateway_token)) == C.OK
        assert await code_of(stub.GetRun(requests["GetRun"], metadata=gateway_token)) == C.OK
        assert await code_of(stub.WatchStatus(requests["WatchStatus"], metadata=gateway_token)) == C.NOT_FOUND
        assert await code_of(stub.ListFindings(requests["ListFindings"], metadata=gateway_token)) == C.OK


async def test_a_hostile_enqueue_cannot_stop_processing(pair: Pair) -> None:
    """base_sequence near 2^63 once made every later claim fail: now it is refused."""
    gateway_token = (("authorization", f"Bearer {auth.GATEWAY_TOKEN}"),)
    async with grpc.aio.insecure_channel(pair.processor.address) as channel:
        stub = ps_grpc.ProcessorServiceStub(channel)
        for bad in (2**63 - 1, -1, 0, 1001):
            hostile = ps.EnqueueRequest(
                workflow_id="wf_" + "ee" * 16,
                title="t",
                plan=[step("test_noop")],
                base_sequence=bad,
                approved_by="alice",
            )
            assert await code_of(stub.Enqueue(hostile, metadata=gateway_token)) == C.INVALID_ARGUMENT
        for missing in ("", "a\x00b"):
            nobody = ps.EnqueueRequest(
                workflow_id="wf_" + "ef" * 16, title="t", plan=[step("test_noop")], base_sequence=2, approved_by=missing
            )
            assert await code_of(stub.Enqueue(nobody, metadata=gateway_token)) == C.INVALID_ARGUMENT
    created = await create(pair.stub)
    workflow_id = created.workflow_id
    await pair.stub.Approve(wpb.ApproveRequest(workflow_id=workflow_id, etag=created.etag), metadata=as_user("alice"))
    watch = wpb.WatchStatusRequest(workflow_id=workflow_id)
    final = [m async for m in pair.stub.WatchStatus(watch, metadata=as_user("alice"))]
    assert final[-1].snapshot.status == S.WORKFLOW_STATUS_COMPLETED


# --- identity in the trail -----------------------------------------------------------------


async def test_a_forged_user_header_is_ignored_and_the_trail_names_the_token(pair: Pair) -> None:
    forged = (("x-auditflow-user", "cfo"), *auth.bearer("carol", ("submitter",)))
    request = wpb.CreateWorkflowRequest(title="t", plan=[step("test_noop")])
    workflow = (await pair.stub.CreateWorkflow(request, metadata=forged)).workflow
    assert workflow.created_by == "carol"
    assert await code_of(pair.stub.CreateWorkflow(request, metadata=(("x-auditflow-user", "cfo"),))) == U
    approver = (("x-auditflow-user", "cfo"), *auth.bearer("alice", ("approver",)))
    await pair.stub.Approve(wpb.ApproveRequest(workflow_id=workflow.workflow_id, etag=workflow.etag), metadata=approver)
    watch = pair.stub.WatchStatus(wpb.WatchStatusRequest(workflow_id=workflow.workflow_id), metadata=as_user("alice"))
    events = [m.event async for m in watch if m.HasField("event")]
    assert [(e.actor, e.actor_auth) for e in events[:2]] == [
        ("carol", f"jwt:{auth.ISSUER}"),
        ("alice", f"jwt:{auth.ISSUER}"),
    ]
    assert "approved by alice" in events[2].message  # the processor's QUEUED event
    assert all("cfo" not in e.message and e.actor != "cfo" for e in events)
    assert events[-1].type == pb.EVENT_TYPE_COMPLETED


async def test_the_creator_may_not_approve_however_the_name_is_cased(pair: Pair) -> None:
    created = await create(pair.stub, owner="Carol")
    workflow_id = created.workflow_id
    approval = wpb.ApproveRequest(workflow_id=workflow_id, etag=created.etag)
    for spelling in ("carol", "CAROL", "\uff23arol"):  # (the last with a full-width C)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pair.stub.Approve(approval, metadata=as_user(spelling))
        assert refused.value.code() == D and details(refused.value)["reason"] == "SEPARATION_OF_DUTIES"
    answer = await pair.stub.Approve(approval, metadata=as_user("dave"))
    assert answer.approved


# --- every input bounded, on both databases --------------------------------------------------


async def test_bad_characters_and_numbers_are_invalid_arguments_and_store_nothing(
    database_urls: tuple[str, str],
) -> None:
    gateway, processor = await start_pair(*database_urls)
    try:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = wpb_grpc.WorkflowServiceStub(channel)
            created = await create(stub)
            workflow_id = created.workflow_id
            nan = step("test_noop")
            nan.parameters.update({"x": float("nan")})
            inf = step("test_noop")
            inf.parameters.update({"nested": {"x": float("inf")}})
            nul = step("test_noop")
            nul.parameters.update({"x": "a\x00b"})
            deep = step("test_noop")
            value: dict[str, Any] = {"leaf": 1}
            for _ in range(20):  # (deeper than the server allows, not than protobuf encodes)
                value = {"d": value}
            deep.parameters.update({"v": value})
            submitter = as_user("sue")
            cases: list[tuple[Any, Any]] = [
                (stub.CreateWorkflow, wpb.CreateWorkflowRequest(title="t", plan=[nan])),
                (stub.CreateWorkflow, wpb.CreateWorkflowRequest(title="t", plan=[inf])),
                (stub.CreateWorkflow, wpb.CreateWorkflowRequest(title="t", plan=[nul])),
                (stub.CreateWorkflow, wpb.CreateWorkflowRequest(title="t", plan=[deep])),
                (stub.CreateWorkflow, wpb.CreateWorkflowRequest(title="a\x00b", plan=[step("test_noop")])),
                (
                    stub.CreateWorkflow,
                    wpb.CreateWorkflowRequest(title="t", plan=[step("test_noop")], request_id="r\x00"),
                ),
                (stub.Approve, wpb.ApproveRequest(workflow_id=workflow_id, etag=created.etag, comment="ok\x00")),
                (
                    stub.Reject,
                    wpb.RejectRequest(workflow_id=workflow_id, etag=created.etag, comment="no", request_id="\x1b[31m"),
                ),
                (stub.CancelWorkflow, wpb.CancelWorkflowRequest(workflow_id=workflow_id, reason="x\x00")),
            ]
            for rpc, request in cases:
                metadata = as_user("owner", ("submitter",)) if rpc == stub.CancelWorkflow else submitter
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await rpc(request, metadata=metadata)
                assert refused.value.code() == C.INVALID_ARGUMENT, (request, refused.value.details())
            listed = await stub.ListWorkflows(wpb.ListWorkflowsRequest(), metadata=submitter)
            assert [w.workflow_id for w in listed.workflows] == [workflow_id]
            assert listed.workflows[0].status == S.WORKFLOW_STATUS_AWAITING_APPROVAL
    finally:
        await gateway.stop(0)
        await processor.stop(1)


async def test_bytes_that_are_not_the_message_are_invalid_arguments_after_authentication(pair: Pair) -> None:
    raw = pair.channel.unary_unary("/auditflow.v1.WorkflowService/CreateWorkflow")
    garbage = [b"\xff\xff\xff\xff", b"\x0a\x05\xc3\x28abc", b"\x12" + b"\x80" * 11]
    nested = b""
    for _ in range(120):  # plan -> parameters -> Struct value nested past the parser's limit
        nested = b"\x2a" + bytes([len(nested)]) + nested if len(nested) < 127 else nested
    garbage.append(b"\x12" + bytes([len(nested) + 2]) + b"\x12" + bytes([len(nested)]) + nested)
    for data in garbage:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw(data, metadata=as_user("sue"))
        assert refused.value.code() == C.INVALID_ARGUMENT, data
        with pytest.raises(grpc.aio.AioRpcError) as stranger:
            await raw(data)
        assert stranger.value.code() == U


# --- data the procedures may read ----------------------------------------------------------


async def test_ledger_paths_outside_the_data_roots_are_refused_alike(pair: Pair, tmp_path: Path) -> None:
    inside = tmp_path / "data"  # (tmp_path lies under a data root of the test servers)
    inside.mkdir()
    assert any(inside.is_relative_to(root) for root in auth.DATA.roots)
    (inside / "link.csv").symlink_to("/etc/passwd")
    cases = {
        "/etc/passwd": "not under a data root",
        "/etc/no-such-file-here": "not under a data root",
        str(Path.home() / ".ssh" / "id_rsa"): "not under a data root",
        "../etc/passwd": "'..' is not allowed",
        str(inside / "link.csv"): "not under a data root",
        str(inside): "is a directory",
        "/dev/zero": "not under a data root",
    }
    for path, why in cases.items():
        request = wpb.CreateWorkflowRequest(title="t", plan=[step("ledger_summary", path=path)])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pair.stub.CreateWorkflow(request, metadata=as_user("sue"))
        assert refused.value.code() == C.INVALID_ARGUMENT and why in (refused.value.details() or ""), path
    shown = {}
    for path in ("/etc/passwd", "/etc/no-such-file-here"):
        request = wpb.CreateWorkflowRequest(title="t", plan=[step("ledger_summary", path=path)])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pair.stub.CreateWorkflow(request, metadata=as_user("sue"))
        shown[path] = (refused.value.details() or "").replace(path, "PATH")
    assert shown["/etc/passwd"] == shown["/etc/no-such-file-here"]  # no existence oracle
    url = wpb.CreateWorkflowRequest(
        title="t", plan=[step("round_amounts", url="postgresql://admin@127.0.0.1:5432/test", table="x")]
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.stub.CreateWorkflow(url, metadata=as_user("sue"))
    assert refused.value.code() == C.INVALID_ARGUMENT and "127.0.0.1" not in (refused.value.details() or "")


async def test_paths_the_system_cannot_look_up_are_invalid_arguments_named_relative(pair: Pair, tmp_path: Path) -> None:
    inside = tmp_path / "data"  # (under a data root of the test servers)
    inside.mkdir()
    (inside / "loop.csv").symlink_to(inside / "loop2.csv")
    (inside / "loop2.csv").symlink_to(inside / "loop.csv")
    (inside / "empty.csv").write_text("")
    cases = {
        "a" * 5000: "too long",  # one name past NAME_MAX
        "d/" * 3000 + "x.csv": "too long",  # the whole path past PATH_MAX
        str(inside / "loop.csv"): "loop of symbolic links",
        str(inside / ("b" * 300)): "too long",
        str(inside / "empty.csv"): "empty",
    }
    for path, why in cases.items():
        request = wpb.CreateWorkflowRequest(title="t", plan=[step("ledger_summary", path=path)])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pair.stub.CreateWorkflow(request, metadata=as_user("sue"))
        message = refused.value.details() or ""
        assert refused.value.code() == C.INVALID_ARGUMENT and why in message, (path[:80], message)
        assert details(refused.value)["fields"] == ["plan[0].parameters.path"], message
        assert len(message) < 1000
        for root in auth.DATA.roots:  # never the server's own layout
            assert root not in message, message


# --- credentials that change without a restart ----------------------------------------------


async def test_api_tokens_are_added_and_revoked_without_a_restart(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    first = append_entry(tokens, "first", "first", ["viewer"])
    auth.MINTED.add(first)
    gateway, processor = await start_pair(
        f"sqlite:///{tmp_path / 'g.db'}",
        f"sqlite:///{tmp_path / 'p.db'}",
        auth=auth.gateway_auth(tokens_file=str(tokens)),
    )
    try:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = wpb_grpc.WorkflowServiceStub(channel)

            async def works(token: str) -> bool:
                call = stub.WhoAmI(wpb.WhoAmIRequest(), metadata=(("authorization", f"Bearer {token}"),))
                return await code_of(call) == C.OK

            assert await works(first)
            second = append_entry(tokens, "second", "second", ["viewer"])
            auth.MINTED.add(second)
            await until(lambda: works(second), "the new token to be accepted")
            tokens.write_text(
                tokens.read_text().split("[[token]]")[0] + "[[token]]" + tokens.read_text().split("[[token]]")[2]
            )
            await until(lambda: _not(works(first)), "the removed token to be refused")
            assert await works(second)
    finally:
        await gateway.stop(0)
        await processor.stop(1)


async def _not(check: Any) -> bool:
    return not await check


async def until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


# --- transport -------------------------------------------------------------------------------


async def test_the_services_talk_over_mutual_tls_and_refuse_other_clients(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue("processor.test", server=True, dns=("localhost",), ips=("127.0.0.1",))
    gateway_cert = ca.issue("auditflow-gateway")
    stranger = ca.issue("someone-else")
    processor = create_processor(
        "127.0.0.1:0",
        ProcessorSettings(
            database_url=f"sqlite:///{tmp_path / 'p.db'}",
            plugins=PLUGINS,
            cycle_delay=0.01,
            auth=AuthSettings(service_identities=("auditflow-gateway",)),
            tls=TlsFiles(str(server.cert), str(server.key), str(ca.ca_file)),
            data=auth.DATA,
        ),
    )
    await processor.start()
    link = ClientTls(str(ca.ca_file), str(gateway_cert.cert), str(gateway_cert.key), server_name="processor.test")
    gateway = create_gateway(
        "127.0.0.1:0",
        GatewaySettings(
            auth=auth.gateway_auth(),
            data=auth.DATA,
            processor_target=processor.address,
            processor_tls=link,
            database_url=f"sqlite:///{tmp_path / 'g.db'}",
            plugins=PLUGINS,
        ),
    )
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = wpb_grpc.WorkflowServiceStub(channel)
            created = await create(stub)
            workflow_id = created.workflow_id
            await stub.Approve(
                wpb.ApproveRequest(workflow_id=workflow_id, etag=created.etag), metadata=as_user("alice")
            )
            final = [
                m
                async for m in stub.WatchStatus(
                    wpb.WatchStatusRequest(workflow_id=workflow_id), metadata=as_user("alice")
                )
            ][-1]
            assert final.snapshot.status == S.WORKFLOW_STATUS_COMPLETED
        get = ps.GetRunRequest(workflow_id=workflow_id)
        for who, expected in ((stranger, U), (None, C.UNAVAILABLE)):
            tls = ClientTls(
                str(ca.ca_file), str(who.cert) if who else "", str(who.key) if who else "", server_name="processor.test"
            )
            async with grpc.aio.secure_channel(processor.address, tls.credentials(), options=tls.options()) as ch:
                assert await code_of(ps_grpc.ProcessorServiceStub(ch).GetRun(get, timeout=5)) == expected
        async with grpc.aio.insecure_channel(processor.address) as plain:  # no TLS at all
            assert await code_of(ps_grpc.ProcessorServiceStub(plain).GetRun(get, timeout=5)) == C.UNAVAILABLE
    finally:
        await gateway.stop(0)
        await processor.stop(1)


async def test_clients_reach_the_gateway_over_tls_on_grpc_and_rest(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue("gateway.test", server=True, dns=("localhost",), ips=("127.0.0.1",))
    gateway, processor = await start_pair(
        f"sqlite:///{tmp_path / 'g.db'}",
        f"sqlite:///{tmp_path / 'p.db'}",
        tls=TlsFiles(str(server.cert), str(server.key)),
        rest_port=0,
    )
    try:
        credentials = grpc.ssl_channel_credentials(ca.ca_file.read_bytes())
        async with grpc.aio.secure_channel(gateway.address, credentials) as channel:
            me = await wpb_grpc.WorkflowServiceStub(channel).WhoAmI(wpb.WhoAmIRequest(), metadata=as_user("tess"))
            assert me.principal == "tess"
        async with grpc.aio.insecure_channel(gateway.address) as plain:
            assert await code_of(wpb_grpc.WorkflowServiceStub(plain).WhoAmI(wpb.WhoAmIRequest(), timeout=5)) in (
                C.UNAVAILABLE,
                C.INTERNAL,
            )
        assert gateway.rest is not None and gateway.rest.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(ca.ca_file))
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{gateway.rest.url}/whoami", ssl=context, headers=auth.headers("tess")) as answer,
        ):
            assert answer.status == 200 and (await answer.json())["principal"] == "tess"
    finally:
        await gateway.stop(0)
        await processor.stop(1)


def test_plaintext_is_refused_off_loopback_unless_allowed(tmp_path: Path) -> None:
    settings = GatewaySettings(**auth.gateway_settings(), database_url=f"sqlite:///{tmp_path / 'g.db'}")
    with pytest.raises(ConfigError, match="plaintext"):
        create_gateway(f"0.0.0.0:{free_port()}", settings)
    with pytest.raises(ConfigError, match="plaintext"):
        create_processor(f"0.0.0.0:{free_port()}", ProcessorSettings(**auth.processor_settings()))
    remote = GatewaySettings(**auth.gateway_settings(), processor_target="10.255.255.1:50052")
    with pytest.raises(ConfigError, match="link to the processor"):
        create_gateway("127.0.0.1:0", remote)


# --- REST -----------------------------------------------------------------------------------


async def test_rest_answers_401_with_a_challenge_and_believes_only_its_trusted_proxies(tmp_path: Path) -> None:
    trusting = {"proxy_user_header": "X-Auditflow-User", "trusted_proxies": ("127.0.0.1/32",)}
    elsewhere = {"proxy_user_header": "X-Auditflow-User", "trusted_proxies": ("10.0.0.0/8",)}
    for proxies, believed in ((trusting, True), (elsewhere, False)):
        gateway, processor = await start_pair(
            f"sqlite:///{tmp_path / f'g{believed}.db'}",
            f"sqlite:///{tmp_path / f'p{believed}.db'}",
            auth=auth.gateway_auth(**proxies),
            rest_port=0,
        )
        try:
            assert gateway.rest is not None
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{gateway.rest.url}/whoami") as answer:
                    assert answer.status == 401
                    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="auditflow"'
                async with http.get(f"{gateway.rest.url}/whoami", headers={"Authorization": "Bearer nope"}) as answer:
                    assert answer.status == 401
                    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
                    assert (await answer.json())["details"][0]["reason"] == "TOKEN_INVALID"
                async with http.get(f"{gateway.rest.url}/whoami", headers={"X-Auditflow-User": "pat"}) as answer:
                    assert (answer.status == 200) is believed
                    if believed:
                        assert (await answer.json())["authenticated_by"] == "proxy:127.0.0.1"
        finally:
            await gateway.stop(0)
            await processor.stop(1)

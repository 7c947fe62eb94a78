"""The CLI's client side on grpcio-testing's fake channel (`grpc_testing.channel`): the test
plays the server, call by call. The token goes on every call and is never printed; a watch
resumes after UNAVAILABLE from the last event it showed, with the token again; errors are
rendered from their rich details."""

from __future__ import annotations

import argparse
import io
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import grpc_testing
import pytest

from auditflow.cli import client, commands
from auditflow.errors import FieldViolation, InvalidArgument
from auditflow.interceptor import to_rich_status
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as api
from auditflow.v1 import workflow_service_pb2_grpc as api_grpc

SERVICE = api.DESCRIPTOR.services_by_name["WorkflowService"]
TOKEN = "aft_cli-test-token-that-must-never-be-printed"
WF = "wf_" + "1" * 32
S = pb.WorkflowStatus


@pytest.fixture
def channel() -> Iterator[grpc_testing.Channel]:
    fake = grpc_testing.channel([api.DESCRIPTOR.services_by_name["WorkflowService"]], grpc_testing.strict_real_time())
    yield fake
    fake.close()


def in_background(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run the client call on a thread while the test serves it; its result or error in `out`."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = work()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def context(fake: grpc_testing.Channel) -> tuple[commands.Context, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    stub = api_grpc.WorkflowServiceStub(fake)  # type: ignore[arg-type]
    return commands.Context(stub=stub, token=TOKEN, out=out, err=err), out, err


class Terminal(io.StringIO):
    """Standard input typed at a terminal (the person confirms there)."""

    def isatty(self) -> bool:
        return True


def bearer(metadata: Any) -> list[str]:
    return [value for key, value in metadata or () if key == "authorization"]


def snapshot(sequence: int, status: int = S.WORKFLOW_STATUS_RUNNING) -> pb.StatusSnapshot:
    return pb.StatusSnapshot(workflow_id=WF, status=status, last_sequence=sequence)  # type: ignore[arg-type]


def event(sequence: int, status: int = S.WORKFLOW_STATUS_RUNNING) -> api.WatchStatusResponse:
    return api.WatchStatusResponse(
        event=pb.WorkflowEvent(workflow_id=WF, sequence=sequence, status=status, message=f"event {sequence}"),  # type: ignore[arg-type]
        snapshot=snapshot(sequence, status),
    )


def test_every_call_carries_the_token_and_nothing_prints_it(channel: grpc_testing.Channel) -> None:
    ctx, out, err = context(channel)
    ctx.stdin = Terminal("y\n")
    args = argparse.Namespace(workflow_id=WF, comment="ok", request_id="", etag="", yes=False)
    thread, result = in_background(lambda: commands.approve(ctx, args))
    # Without --yes, the plan is read and shown first; its etag is what the approval is bound to.
    metadata, request, rpc = channel.take_unary_unary(SERVICE.methods_by_name["GetWorkflow"])
    assert bearer(metadata) == [f"Bearer {TOKEN}"] and request.workflow_id == WF
    shown = pb.Workflow(workflow_id=WF, title="q3", etag="a" * 64, status=S.WORKFLOW_STATUS_AWAITING_APPROVAL)
    rpc.terminate(api.GetWorkflowResponse(workflow=shown), (), grpc.StatusCode.OK, "")
    metadata, request, rpc = channel.take_unary_unary(SERVICE.methods_by_name["Approve"])
    assert bearer(metadata) == [f"Bearer {TOKEN}"]
    assert request.workflow_id == WF and request.comment == "ok" and request.etag == "a" * 64
    answer = api.ApproveResponse(workflow_id=WF, approved=True, workflow_status=S.WORKFLOW_STATUS_APPROVED)
    rpc.terminate(answer, (), grpc.StatusCode.OK, "")
    thread.join(10)
    assert result == {"result": 0}
    thread, result = in_background(lambda: commands.whoami(ctx, argparse.Namespace()))
    metadata, _, rpc = channel.take_unary_unary(SERVICE.methods_by_name["WhoAmI"])
    assert bearer(metadata) == [f"Bearer {TOKEN}"]
    limits = api.CallerLimits(
        write=api.CallRate(per_second=10, burst=20),
        read=api.CallRate(per_second=2.5, burst=5),
        max_streams=50,
        open_streams=3,
        pending_plans=2,
        max_plan_steps=100,
        max_parameters_bytes=16384,
    )
    rpc.terminate(
        api.WhoAmIResponse(principal="alice", roles=["approver"], authenticated_by="token:alice", limits=limits),
        (),
        grpc.StatusCode.OK,
        "",
    )
    thread.join(10)
    assert "alice (approver; authenticated by token:alice)" in out.getvalue()
    assert (
        "limits: writes 10/s (bursts of 20), reads 2.5/s (bursts of 5), streams opened unlimited; open streams "
        "3 of 50; plans awaiting approval 2 (no limit); plans of any size, at most 100 steps, 16384 bytes of "
        "parameters a step"
    ) in out.getvalue()
    assert TOKEN not in out.getvalue() + err.getvalue() and TOKEN not in repr(ctx)


def test_a_watch_resumes_after_unavailable_from_the_last_event_with_the_token(channel: grpc_testing.Channel) -> None:
    ctx, _, _ = context(channel)
    shown: list[int] = []
    reconnects: list[str] = []
    second = threading.Event()

    def show(e: pb.WorkflowEvent, s: pb.StatusSnapshot) -> None:
        shown.append(e.sequence)
        if e.sequence == 2:
            second.set()

    thread, result = in_background(
        lambda: client.watch(
            ctx.stub,
            WF,
            metadata=ctx.metadata,
            on_event=show,
            on_heartbeat=lambda s: None,
            on_reconnect=lambda text, delay: reconnects.append(text),
            sleep=lambda seconds: None,
        )
    )
    method = SERVICE.methods_by_name["WatchStatus"]
    metadata, request, rpc = channel.take_unary_stream(method)
    assert bearer(metadata) == [f"Bearer {TOKEN}"] and request.after_sequence == 0
    rpc.send_response(event(1))
    rpc.send_response(event(2))
    assert second.wait(10)  # (the fake channel drops what is unread when the call ends)
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "connection reset")
    metadata, request, rpc = channel.take_unary_stream(method)  # the reconnect
    assert bearer(metadata) == [f"Bearer {TOKEN}"] and request.after_sequence == 2
    rpc.send_response(event(2))  # a server that repeats an event: shown once
    rpc.send_response(event(3, S.WORKFLOW_STATUS_COMPLETED))
    rpc.terminate((), grpc.StatusCode.OK, "")
    thread.join(10)
    assert shown == [1, 2, 3]
    assert result["result"].status == S.WORKFLOW_STATUS_COMPLETED
    assert len(reconnects) == 1 and "reconnecting after event #2" in reconnects[0]


def test_a_watch_does_not_retry_a_refusal(channel: grpc_testing.Channel) -> None:
    ctx, _, _ = context(channel)
    thread, result = in_background(
        lambda: client.watch(
            ctx.stub,
            WF,
            metadata=ctx.metadata,
            on_event=lambda e, s: None,
            on_heartbeat=lambda s: None,
            on_reconnect=lambda t, d: None,
            sleep=lambda s: None,
        )
    )
    _, _, rpc = channel.take_unary_stream(SERVICE.methods_by_name["WatchStatus"])
    rpc.terminate((), grpc.StatusCode.UNAUTHENTICATED, "the token has expired")
    thread.join(10)
    error = result["error"]
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    rendered = client.format_rpc_error(error)
    assert rendered.startswith("error: UNAUTHENTICATED: the token has expired")
    assert "--token-file" in rendered and TOKEN not in rendered


def test_errors_are_rendered_with_their_field_violations(channel: grpc_testing.Channel) -> None:
    ctx, _, _ = context(channel)
    args = argparse.Namespace(workflow_id=WF, comment="", request_id="", etag="b" * 64, yes=True)
    thread, result = in_background(lambda: commands.approve(ctx, args))
    _, request, rpc = channel.take_unary_unary(SERVICE.methods_by_name["Approve"])  # --yes --etag: no read first
    assert request.etag == "b" * 64
    refusal = to_rich_status(InvalidArgument("bad", violations=[FieldViolation("comment", "contains NUL")]))
    rpc.terminate(None, refusal.trailing_metadata, refusal.code, refusal.details)
    thread.join(10)
    assert client.format_rpc_error(result["error"]) == "error: INVALID_ARGUMENT: bad\n  comment: contains NUL"


def test_a_token_is_not_sent_in_plaintext_off_loopback() -> None:
    with pytest.raises(client.CliError, match=r"refusing to send your token in plaintext to gw\.example"):
        client.open_channel(client.Connection("gw.example:50051"), TOKEN)
    client.open_channel(client.Connection("gw.example:50051", plaintext=True), TOKEN).close()
    client.open_channel(client.Connection("127.0.0.1:50051"), TOKEN).close()
    client.open_channel(client.Connection("gw.example:50051"), None).close()  # nothing to leak


def test_the_token_comes_from_flag_file_environment_or_config(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUDITFLOW_TOKEN", "AUDITFLOW_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUDITFLOW_CONFIG", str(tmp_path / "config.toml"))
    assert client.find_token(None, None) is None
    (tmp_path / "config.toml").write_text(f'token_file = "{tmp_path / "cfg.token"}"\n')
    (tmp_path / "cfg.token").write_text("aft_from-config\n")
    assert client.find_token(None, None) == "aft_from-config"
    monkeypatch.setenv("AUDITFLOW_TOKEN_FILE", str(tmp_path / "env.token"))
    (tmp_path / "env.token").write_text("aft_from-env-file")
    assert client.find_token(None, None) == "aft_from-env-file"
    monkeypatch.setenv("AUDITFLOW_TOKEN", "aft_from-env")
    assert client.find_token(None, None) == "aft_from-env"
    (tmp_path / "flag.token").write_text("aft_from-flag-file\n")
    assert client.find_token(None, str(tmp_path / "flag.token")) == "aft_from-flag-file"
    assert client.find_token("aft_given", None) == "aft_given"
    (tmp_path / "two.token").write_text("aft_a aft_b\n")
    with pytest.raises(client.CliError, match="one token and nothing else"):
        client.find_token(None, str(tmp_path / "two.token"))
    (tmp_path / "config.toml").write_text("colour = 'blue'\n")
    monkeypatch.delenv("AUDITFLOW_TOKEN")
    monkeypatch.delenv("AUDITFLOW_TOKEN_FILE")
    with pytest.raises(client.CliError, match="unknown keys: colour"):
        client.find_token(None, None)

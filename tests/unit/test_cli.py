"""The client CLI's pure parts, plus its error and watch paths against an in-process fake gateway."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import json_format

from auditflow import cli, sample
from auditflow.cli import client, commands, demo, render, secrets
from auditflow.errors import FieldViolation, InvalidArgument, NotFound
from auditflow.interceptor import to_rich_status
from auditflow.procedures import AUDIT_PROCEDURES
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as api
from auditflow.v1 import workflow_service_pb2_grpc as api_grpc

S = pb.WorkflowStatus
WF = "wf_" + "0" * 32


# --- argument parsing ------------------------------------------------------------------------


def parse(*argv: str) -> Any:
    return cli.build_parser().parse_args(argv)


def test_global_options_before_or_after_the_command() -> None:
    args = parse("--target", "h:1", "--token-file", "a.token", "get", WF, "--json")
    assert (args.target, args.token_file, args.json, args.workflow_id) == ("h:1", "a.token", True, WF)
    args = parse("--token-file", "a.token", "get", WF, "--token-file", "b.token")
    assert args.token_file == "b.token"


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITFLOW_TARGET", "gw:9")
    args = parse("get", WF)
    assert (args.target, args.json) == ("gw:9", False)


def test_default_target_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUDITFLOW_TARGET", raising=False)
    assert parse("get", WF).target == "localhost:50051"


def test_submit_needs_exactly_one_plan_source(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("submit")
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        parse("submit", "--sample", "--plan", "p.json")
    assert "not allowed with" in capsys.readouterr().err
    args = parse("submit", "--sample", "--max-cycles", "5", "-q")
    assert (args.sample, args.max_cycles, args.quiet) == (True, 5, True)


def test_list_statuses_and_paging() -> None:
    args = parse("list", "--status", "running", "COMPLETED", "--status", "workflow_status_failed", "--all")
    assert args.status == [S.WORKFLOW_STATUS_RUNNING, S.WORKFLOW_STATUS_COMPLETED, S.WORKFLOW_STATUS_FAILED]
    assert args.all and args.page_size == 50


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["list", "--status", "bogus"], "unknown status 'bogus'"),
        (["list", "--status", "unspecified"], "UNSPECIFIED"),
        (["list", "--page-size", "0"], "at least 1"),
        (["watch", WF, "--after", "-1"], "must not be negative"),
        (["submit", "--sample", "--max-cycles", "x"], "not a whole number"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_options() -> None:
    args = parse("demo", "--data-dir", "/tmp/x", "--gateway-port", "0")
    assert (args.data_dir, args.gateway_port, args.processor_port) == ("/tmp/x", 0, 0)
    assert args.submitter != args.approver


def test_demo_refuses_same_submitter_and_approver(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--submitter", "x", "--approver", "x"]) == 2
    assert "must differ" in capsys.readouterr().err


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("submit", "approve", "reject", "cancel", "get", "list", "watch", "demo"):
        assert name in out


# --- plans -----------------------------------------------------------------------------------


def test_sample_plan_points_at_the_packaged_ledger() -> None:
    summary, *others = sample.sample_plan()
    assert summary.procedure == "ledger_summary"
    path = Path(summary.parameters["path"])
    assert path.is_absolute() and path.is_file() and path.name == "ledger.csv"
    assert all(step.parameters["path"] == str(path) for step in others)


def test_load_plan(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps([{"procedure": "a", "parameters": {"n": 1}}, {"procedure": "b"}]))
    plan = commands.load_plan(str(plan_file))
    assert [s.procedure for s in plan] == ["a", "b"]
    assert plan[0].parameters["n"] == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("[{", "is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 3"),
        ('{"procedure": "a"}', "expected a JSON list"),
        ("[]", "no steps"),
        ("[1]", "step 0 is not a JSON object"),
        ('[{"parameters": {}}]', 'needs a "procedure"'),
        ('[{"procedure": "a", "parameters": []}]', '"parameters" must be a JSON object'),
        ('[{"procedure": "a", "params": {}}]', "unknown keys: params"),
    ],
)
def test_bad_plan_files_give_a_clear_message_and_exit_2(
    tmp_path: Path, content: str | None, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file = tmp_path / "plan.json"
    if content is not None:
        plan_file.write_text(content)
    # No server is contacted: the plan is read before any RPC.
    code = cli.main(["--target", "127.0.0.1:1", "submit", "--plan", str(plan_file)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: plan ")
    assert message in err
    assert "Traceback" not in err


# --- errors ----------------------------------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[Any, ...] = ()) -> None:
        super().__init__(details)
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self._trailers


def rich_error(error: InvalidArgument | NotFound) -> FakeRpcError:
    status = to_rich_status(error)
    return FakeRpcError(status.code, status.details, status.trailing_metadata)


def test_error_with_bad_request_lists_the_field_violations() -> None:
    error = rich_error(
        InvalidArgument(
            "invalid workflow: title: required",
            violations=[FieldViolation("title", "required"), FieldViolation("plan[0].procedure", "unknown")],
        )
    )
    assert client.format_rpc_error(error) == (
        "error: INVALID_ARGUMENT: invalid workflow: title: required\n  title: required\n  plan[0].procedure: unknown"
    )


def test_error_without_details_is_one_line() -> None:
    assert client.format_rpc_error(rich_error(NotFound("no workflow wf_x"))) == "error: NOT_FOUND: no workflow wf_x"
    plain = FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "no")
    assert client.format_rpc_error(plain) == "error: PERMISSION_DENIED: no"


def test_error_with_garbage_trailer_still_formats() -> None:
    error = FakeRpcError(grpc.StatusCode.INTERNAL, "boom", (("grpc-status-details-bin", b"\xff\x00garbage"),))
    assert client.format_rpc_error(error) == "error: INTERNAL: boom"


def test_unavailable_without_message_hints_at_the_target() -> None:
    error = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "")
    assert client.format_rpc_error(error) == "error: UNAVAILABLE: unavailable (is the gateway running? see --target)"


def test_exit_codes() -> None:
    assert client.exit_code_for(S.WORKFLOW_STATUS_COMPLETED) == 0
    for status in (S.WORKFLOW_STATUS_FAILED, S.WORKFLOW_STATUS_CANCELLED, S.WORKFLOW_STATUS_REJECTED):
        assert client.exit_code_for(status) == 1


# --- rendering -------------------------------------------------------------------------------


def snapshot(status: int = S.WORKFLOW_STATUS_RUNNING, done: int = 1, total: int = 4, **kw: Any) -> pb.StatusSnapshot:
    return pb.StatusSnapshot(
        workflow_id=WF,
        status=status,  # type: ignore[arg-type]
        cycle=kw.pop("cycle", 2),
        max_cycles=kw.pop("max_cycles", 15),
        progress=pb.Progress(done=done, total=total),
        **kw,
    )


@pytest.mark.parametrize(
    ("done", "total", "expected"),
    [(0, 4, "[--------]"), (1, 4, "[##------]"), (4, 4, "[########]"), (9, 4, "[########]"), (3, 0, "[--------]")],
)
def test_bar(done: int, total: int, expected: str) -> None:
    assert render.bar(done, total, width=8) == expected


def test_progress_line_shows_status_cycle_progress_and_message() -> None:
    line = render.progress_line(snapshot(last_message="step 1 of 4:\n  ledger_summary done"), columns=200)
    assert line.startswith("RUNNING")
    assert "cycle 2/15" in line
    assert "[######------------------] 1/4" in line
    assert line.endswith("step 1 of 4: ledger_summary done")


def test_progress_line_fits_the_terminal() -> None:
    line = render.progress_line(snapshot(last_message="x" * 500), columns=80)
    assert len(line) == 80 and line.endswith("…")


def test_progress_line_unknown_max_cycles() -> None:
    assert "cycle 0/?" in render.progress_line(snapshot(S.WORKFLOW_STATUS_QUEUED, 0, 0, cycle=0, max_cycles=0))


def event(sequence: int, status: int = S.WORKFLOW_STATUS_RUNNING, **kw: Any) -> pb.WorkflowEvent:
    return pb.WorkflowEvent(
        workflow_id=WF,
        sequence=sequence,
        type=kw.pop("type", pb.EventType.EVENT_TYPE_CYCLE_COMPLETED),
        status=status,  # type: ignore[arg-type]
        **kw,
    )


def test_event_line() -> None:
    e = event(7, cycle=2, progress=pb.Progress(done=1, total=3), actor="processor", message="ok")
    e.time.FromSeconds(1_767_225_600)
    assert render.event_line(e) == "#7 2026-01-01T00:00:00.000Z CYCLE_COMPLETED RUNNING cycle 2 1/3 by processor: ok"
    assert render.event_line(event(1, S.WORKFLOW_STATUS_AWAITING_APPROVAL, type=1)) == (
        "#1 - CREATED AWAITING_APPROVAL"
    )


def test_table_aligns_columns() -> None:
    assert render.table(("A", "BB"), [["xxx", "y"], ["z", ""]]) == "A    BB\nxxx  y\nz"


def test_progress_view_not_a_tty_prints_one_line_per_event_and_ignores_heartbeats() -> None:
    out = io.StringIO()
    view = render.ProgressView(out, live=False)
    view.event(event(3), snapshot())
    view.refresh(snapshot())
    view.event(event(4), snapshot())
    view.close()
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["#3", "#4"]
    assert "\r" not in out.getvalue()


def test_progress_view_on_a_tty_redraws_the_bar_in_place() -> None:
    out = io.StringIO()
    view = render.ProgressView(out, live=True)
    view.event(event(3), snapshot(done=1))
    view.refresh(snapshot(done=2, last_message="heartbeat"))
    view.close()
    text = out.getvalue()
    assert text.startswith("#3 ")
    assert text.count("\r\x1b[2K") == 1  # the heartbeat replaced the first bar
    assert text.endswith("2/4  heartbeat\n")


def test_workflow_summary_shows_error_and_result() -> None:
    workflow = pb.Workflow(
        workflow_id=WF,
        title="t",
        status=S.WORKFLOW_STATUS_FAILED,
        created_by="alice",
        decided_by="bob",
        decision_comment="fine",
        progress=pb.Progress(done=1, total=2),
        max_cycles=15,
        error=pb.RunError(reason="MAX_CYCLES_EXCEEDED", message="too slow"),
        plan=[pb.PlanStep(procedure="ledger_summary")],
    )
    workflow.result.update({"rows": 3})
    text = render.workflow_summary(workflow)
    assert "error         MAX_CYCLES_EXCEEDED: too slow" in text
    assert "decision      approved by bob: fine" in text and "etag          -" in text
    assert "1. ledger_summary {}" in text
    assert '    "rows": 3\n' in text


def test_approve_summary_has_the_seed_fields() -> None:
    response = api.ApproveResponse(
        workflow_id=WF,
        approved=True,
        background_processing_started=True,
        processing_message="started",
        workflow_status=S.WORKFLOW_STATUS_APPROVED,
    )
    text = render.approve_summary(response, latency_ms=3.21)
    for expected in (
        "approved                       true",
        "background_processing_started  true",
        "processing_message             started",
        "workflow_status                APPROVED",
        "updated_at                     -",
        "latency                        3.2 ms",
    ):
        assert expected in text


# --- watch: reconnects and de-duplication ----------------------------------------------------


def response(seq: int, status: int = S.WORKFLOW_STATUS_RUNNING, last: int | None = None) -> api.WatchStatusResponse:
    snap = snapshot(status, last_sequence=seq if last is None else last)
    return api.WatchStatusResponse(event=event(seq, status), snapshot=snap)


def heartbeat(status: int = S.WORKFLOW_STATUS_RUNNING, last: int = 0) -> api.WatchStatusResponse:
    return api.WatchStatusResponse(heartbeat=pb.Heartbeat(), snapshot=snapshot(status, last_sequence=last))


class FakeStub:
    """Scripted WatchStatus calls: each a list of responses, optionally ending with an error."""

    def __init__(self, *calls: list[Any]) -> None:
        self.calls = list(calls)
        self.requests: list[api.WatchStatusRequest] = []
        self.status = snapshot(S.WORKFLOW_STATUS_RUNNING)

    def WatchStatus(self, request: api.WatchStatusRequest, metadata: Any = None) -> Iterator[Any]:
        self.requests.append(request)
        script = self.calls.pop(0)

        def stream() -> Iterator[Any]:
            for item in script:
                if isinstance(item, Exception):
                    raise item
                yield item

        return stream()

    def GetStatus(self, request: api.GetStatusRequest, metadata: Any = None) -> api.GetStatusResponse:
        return api.GetStatusResponse(status=self.status)


def run_watch(stub: FakeStub, **kw: Any) -> tuple[pb.StatusSnapshot, list[int], list[str], list[float]]:
    seen: list[int] = []
    notes: list[str] = []
    sleeps: list[float] = []
    final = client.watch(
        stub,  # type: ignore[arg-type]
        WF,
        metadata=(),
        on_event=lambda e, s: seen.append(e.sequence),
        on_heartbeat=lambda s: None,
        on_reconnect=lambda text, delay: notes.append(text),
        sleep=sleeps.append,
        **kw,
    )
    return final, seen, notes, sleeps


def unavailable() -> FakeRpcError:
    return FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection reset")


def test_watch_reconnects_after_the_last_seen_sequence_without_duplicates() -> None:
    stub = FakeStub(
        [response(1), response(2), heartbeat(last=2), unavailable()],
        [unavailable()],
        [response(2), response(3), response(4, S.WORKFLOW_STATUS_COMPLETED)],
    )
    final, seen, notes, sleeps = run_watch(stub)
    assert final.status == S.WORKFLOW_STATUS_COMPLETED
    assert seen == [1, 2, 3, 4]
    assert [r.after_sequence for r in stub.requests] == [0, 2, 2]
    # the shared backoff while disconnected: 0.5 s then 1 s, each with jitter down to half
    assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0
    assert "reconnecting after event #2" in notes[0]


def test_watch_waits_for_the_terminal_event_when_replaying() -> None:
    # A late joiner's first snapshot already says COMPLETED; it still reads the log to the end.
    done = S.WORKFLOW_STATUS_COMPLETED
    stub = FakeStub([response(1, done, last=3), response(2, done, last=3), response(3, done, last=3)])
    final, seen, _, _ = run_watch(stub)
    assert seen == [1, 2, 3]
    assert final.status == S.WORKFLOW_STATUS_COMPLETED


def test_watch_after_the_end_asks_for_the_status() -> None:
    stub = FakeStub([])
    stub.status = snapshot(S.WORKFLOW_STATUS_FAILED, last_sequence=5)
    final, seen, _, _ = run_watch(stub, after_sequence=5)
    assert (final.status, seen) == (S.WORKFLOW_STATUS_FAILED, [])


def test_watch_gives_up_after_a_while() -> None:
    clock = iter(range(0, 1000, 10))
    stub = FakeStub(*([unavailable()] for _ in range(10)))
    with pytest.raises(grpc.RpcError):
        run_watch(stub, give_up_after=25, clock=lambda: float(next(clock)))
    assert len(stub.requests) == 4


def test_watch_does_not_retry_other_errors() -> None:
    stub = FakeStub([FakeRpcError(grpc.StatusCode.NOT_FOUND, "no such workflow")])
    with pytest.raises(grpc.RpcError):
        run_watch(stub)
    assert len(stub.requests) == 1


# --- the whole CLI against an in-process fake gateway ----------------------------------------


WF_AWAITING = "wf_" + "2" * 32  # the one plan the fake gateway has: awaiting a second approval
ETAG = "e" * 64


def awaiting_plan() -> pb.Workflow:
    """A plan at its second revision, one of two approvals given, its ledger fingerprinted."""
    step = pb.PlanStep(procedure="ledger_summary")
    step.parameters.update({"path": "ledger.csv", "materiality": "2,500"})
    step.sources.add(parameter="path", path="ledger.csv", size_bytes=1234, sha256="ab" * 32)
    return pb.Workflow(
        workflow_id=WF_AWAITING,
        title="Q3 ledger",
        status=S.WORKFLOW_STATUS_AWAITING_APPROVAL,
        created_by="carol",
        revision=2,
        etag=ETAG,
        max_cycles=15,
        required_approvals=2,
        plan=[step],
        approvals=[pb.Approval(approver="alice", etag=ETAG, revision=2)],
    )


class FakeGateway(api_grpc.WorkflowServiceServicer):
    def __init__(self) -> None:
        self.credentials: list[str] = []
        self.final = S.WORKFLOW_STATUS_COMPLETED
        self.reads = 0
        self.decisions: list[Any] = []  # every Approve and Reject request received

    def _user(self, context: grpc.ServicerContext) -> None:
        self.credentials += [v for k, v in context.invocation_metadata() if k == "authorization"]  # type: ignore[misc]

    def CreateWorkflow(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._user(context)
        if not request.title.strip():
            bad = InvalidArgument("invalid workflow: title: required", violations=[FieldViolation("title", "required")])
            context.abort_with_status(to_rich_status(bad))
        return api.CreateWorkflowResponse(
            workflow=pb.Workflow(workflow_id=WF, title=request.title, plan=request.plan, created_by="alice")
        )

    def GetWorkflow(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.workflow_id == WF_AWAITING:
            self.reads += 1
            return api.GetWorkflowResponse(workflow=awaiting_plan())
        context.abort_with_status(to_rich_status(NotFound(f"no workflow {request.workflow_id}")))

    def Approve(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.decisions.append(request)
        return api.ApproveResponse(
            workflow_id=request.workflow_id, approved=True, workflow_status=S.WORKFLOW_STATUS_APPROVED
        )

    def Reject(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.decisions.append(request)
        workflow = awaiting_plan()
        workflow.status = S.WORKFLOW_STATUS_REJECTED
        return api.RejectResponse(workflow=workflow)

    def WatchStatus(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield response(1)
        yield heartbeat(last=1)
        final = response(2, self.final)
        final.snapshot.error.reason = "" if self.final == S.WORKFLOW_STATUS_COMPLETED else "CRITICAL_ERROR"
        final.snapshot.error.message = "bad ledger"
        yield final


@pytest.fixture
def gateway() -> Iterator[tuple[FakeGateway, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    fake = FakeGateway()
    api_grpc.add_WorkflowServiceServicer_to_server(fake, server)
    port = server.add_insecure_port(f"127.0.0.1:{demo.free_port()}")
    server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_submit_sends_the_token_and_prints_the_id(
    gateway: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake, target = gateway
    (tmp_path / "alice.token").write_text("aft_secret-of-alice\n")
    token_file = str(tmp_path / "alice.token")
    assert cli.main(["--target", target, "--token-file", token_file, "submit", "--sample", "--title", "t", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == WF + "\n"
    assert fake.credentials == ["Bearer aft_secret-of-alice"]
    assert "aft_secret" not in captured.err


def test_rpc_errors_are_one_line_plus_violations_and_exit_2(
    gateway: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, target = gateway
    assert cli.main(["--target", target, "get", WF]) == 2
    assert capsys.readouterr().err == f"error: NOT_FOUND: no workflow {WF}\n"
    assert cli.main(["--target", target, "submit", "--sample", "--title", " "]) == 2
    assert capsys.readouterr().err == "error: INVALID_ARGUMENT: invalid workflow: title: required\n  title: required\n"


def test_unreachable_gateway_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--target", f"127.0.0.1:{demo.free_port()}", "get", WF]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE: ") and "Traceback" not in err


@pytest.mark.parametrize(("final", "code"), [(S.WORKFLOW_STATUS_COMPLETED, 0), (S.WORKFLOW_STATUS_FAILED, 1)])
def test_watch_exit_code(
    gateway: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str], final: int, code: int
) -> None:
    fake, target = gateway
    fake.final = final  # type: ignore[assignment]
    assert cli.main(["--target", target, "watch", WF]) == code
    captured = capsys.readouterr()
    assert [line.split()[0] for line in captured.out.splitlines()[:2]] == ["#1", "#2"]
    if code:
        assert "FAILED: CRITICAL_ERROR: bad ledger" in captured.err


def test_watch_json_prints_one_object_per_event(
    gateway: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, target = gateway
    assert cli.main(["--target", target, "--json", "watch", WF]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["event"]["sequence"] for line in lines] == [1, 2]


def test_free_port_is_bindable() -> None:
    port = demo.free_port()
    assert 0 < port < 65536


def test_tail_of_a_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    assert demo.tail(log, 3) == "line 47\nline 48\nline 49"
    assert demo.tail(tmp_path / "missing.log").startswith("(cannot read")


# --- the sample plan and its findings --------------------------------------------------------


def test_the_sample_plan_runs_the_audit_procedures_after_the_summary() -> None:
    plan = sample.sample_plan()
    names = [step.procedure for step in plan]
    assert names[:2] == ["ledger_summary", "vendor_totals"]
    assert names[2:] == list(AUDIT_PROCEDURES)


def test_the_sample_option_says_how_many_steps_the_sample_has(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["submit", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert f"{len(sample.sample_plan())} steps" in shown


def test_each_audit_step_is_summarised_on_a_line() -> None:
    from auditflow.procedures import load

    registry = load()
    steps = []
    for step in sample.sample_plan():
        parameters = json_format.MessageToDict(step.parameters)
        procedure = registry.get(step.procedure)
        assert procedure is not None
        result = procedure.run(parameters)
        result.pop("findings", None)  # (the processor stores them; a result holds the summary)
        steps.append({"procedure": step.procedure, "result": result})
    text = render.result_text({"steps": steps})
    assert '"rows": 240' in text  # the summary step stays JSON
    assert "3. duplicate_payments: 3 findings (2 high, 1 medium), " in text
    assert "amounts at stake are per procedure" in text
    workflow = pb.Workflow(workflow_id=WF, title="t", status=S.WORKFLOW_STATUS_REJECTED, decided_by="rita")
    workflow.result.update({"steps": steps})
    summary = render.workflow_summary(workflow)
    assert "8. segregation_of_duties: 2 findings (" in summary and "decision      rejected by rita" in summary


def test_findings_are_shown_whole_with_their_explanation_wrapped() -> None:
    words = " ".join(f"word{i}" for i in range(40))
    finding = pb.Finding(
        finding_id="f7",
        step=3,
        procedure="dupes",
        severity="high",
        amount="10.00",
        entry_ids=["a", "b", "c", "d", "e"],
        entry_count=1200,
        explanation=words + "  then act",
    )
    lines = render.findings_text([finding], width=60).splitlines()
    assert lines[0].split() == ["f7", "high", "10.00", "step", "3", "dupes", "a,", "b,", "c,", "d,", "e", "+1195"]
    assert all(len(line) <= 60 for line in lines[1:]) and len(lines) > 3
    assert " ".join(" ".join(line.split()) for line in lines[1:]) == words + " then act"


def test_get_shows_who_approved_and_how_many_more_are_needed() -> None:
    needs_two = pb.Workflow(
        workflow_id="wf_1",
        status=pb.WORKFLOW_STATUS_AWAITING_APPROVAL,
        required_approvals=2,
        approvals=[pb.Approval(approver="alice", comment="fine")],
        etag="e" * 64,
    )
    text = render.workflow_summary(needs_two)
    assert "approvals     1 of 2 (1 more needed, none of them the creator)" in text
    assert "  approved by alice at " in text and text.index("approved by alice") > text.index("1 of 2")
    assert f"etag          {'e' * 64}" in text
    needs_two.approvals.add(approver="bob")
    needs_two.status = pb.WORKFLOW_STATUS_APPROVED
    text = render.workflow_summary(needs_two)
    assert "approvals     2 of 2\n" in text and "more needed" not in text and "approved by bob" in text
    alone = pb.Workflow(
        workflow_id="wf_2",
        status=pb.WORKFLOW_STATUS_RUNNING,
        required_approvals=1,
        decided_by="alice",
        decision_comment="ok",
    )
    alone.approvals.add(approver="alice")
    assert "decision      approved by alice: ok" in render.workflow_summary(alone)
    assert "approvals" not in render.workflow_summary(alone)  # one approver: one line, as before


def test_secrets_are_written_once_private_and_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "secrets"
    assert cli.main(["secrets", str(target)]) == 0
    for name in secrets.FILES:
        assert (target / name).stat().st_mode & 0o777 == 0o600, name
    password = (target / "postgres-password").read_text().strip()
    assert (target / "pgpass").read_text().strip() == f"*:*:*:auditflow:{password}" and len(password) >= 32
    token = (target / "operator.token").read_text().strip()
    assert token not in capsys.readouterr().out and token not in (target / secrets.GATEWAY_TOKENS).read_text()
    before = {name: (target / name).read_bytes() for name in secrets.FILES}
    assert cli.main(["secrets", str(target)]) == 2
    assert "already holds" in capsys.readouterr().err
    assert {name: (target / name).read_bytes() for name in secrets.FILES} == before


# --- decisions: review, then confirm ---------------------------------------------------------


class Terminal(io.StringIO):
    """Standard input typed at a terminal: what the person answers, and when they were asked."""

    def __init__(self, answer: str, fake: FakeGateway) -> None:
        super().__init__(answer)
        self.fake = fake
        self.decisions_when_asked: list[Any] | None = None

    def isatty(self) -> bool:
        return True

    def readline(self, size: int | None = -1) -> str:
        self.decisions_when_asked = list(self.fake.decisions)
        return super().readline(size)


def test_approve_without_a_terminal_shows_the_plan_and_sends_nothing(
    gateway: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, target = gateway
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # piped, not typed: nobody to ask
    assert cli.main(["--target", target, "approve", WF_AWAITING]) == 2
    err = capsys.readouterr().err
    assert "1. ledger_summary" in err and '"materiality": "2,500"' in err  # the plan was shown
    assert f"auditflow approve {WF_AWAITING} --etag {ETAG} --yes" in err
    assert fake.decisions == []


def test_yes_without_an_etag_is_refused_before_anything_is_read_or_sent(
    gateway: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = gateway
    for command in (["approve", WF_AWAITING, "--yes"], ["reject", WF_AWAITING, "--yes", "--comment", "no"]):
        assert cli.main(["--target", target, *command]) == 2
        assert "--yes needs --etag ETAG" in capsys.readouterr().err
    assert (fake.reads, fake.decisions) == (0, [])


def test_approve_on_a_terminal_shows_the_plan_and_sends_only_after_yes(
    gateway: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, target = gateway
    terminal = Terminal("y\n", fake)
    monkeypatch.setattr("sys.stdin", terminal)
    assert cli.main(["--target", target, "approve", WF_AWAITING, "--comment", "checked"]) == 0
    captured = capsys.readouterr()
    review = captured.err
    assert "revision      2, etag " + ETAG in review
    assert '1. ledger_summary {"materiality": "2,500", "path": "ledger.csv"}' in review
    assert "path=ledger.csv: 1234 bytes, sha256 " + "ab" * 32 in review
    assert "approvals     1 of 2 (alice)" in review
    assert f"approve revision 2 of {WF_AWAITING}" in review and "[y/N]" in review
    assert terminal.decisions_when_asked == []  # asked before anything was sent
    assert [(d.workflow_id, d.etag, d.comment) for d in fake.decisions] == [(WF_AWAITING, ETAG, "checked")]
    assert "approved                       true" in captured.out


@pytest.mark.parametrize("answer", ["n\n", "\n", ""])
def test_approve_on_a_terminal_sends_nothing_unless_the_answer_is_yes(
    gateway: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    fake, target = gateway
    monkeypatch.setattr("sys.stdin", Terminal(answer, fake))
    assert cli.main(["--target", target, "approve", WF_AWAITING]) == commands.EXIT_DECLINED
    assert "nothing sent" in capsys.readouterr().err
    assert (fake.reads, fake.decisions) == (1, [])


def test_a_script_decides_on_the_etag_it_names_without_a_question(
    gateway: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, target = gateway
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli.main(["--target", target, "approve", WF_AWAITING, "--yes", "--etag", ETAG]) == 0
    reject = ["reject", WF_AWAITING, "--yes", "--etag", ETAG, "--comment", "wrong period"]
    assert cli.main(["--target", target, *reject]) == 0
    assert fake.reads == 0
    sent = [(type(d).__name__, d.etag, d.comment) for d in fake.decisions]
    assert sent == [("ApproveRequest", ETAG, ""), ("RejectRequest", ETAG, "wrong period")]


def test_a_reject_needs_a_reason_and_a_stale_etag_is_refused_before_sending(
    gateway: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, target = gateway
    monkeypatch.setattr("sys.stdin", Terminal("y\n", fake))
    assert cli.main(["--target", target, "reject", WF_AWAITING, "--yes", "--etag", ETAG]) == 2
    assert "--comment is required" in capsys.readouterr().err
    assert cli.main(["--target", target, "approve", WF_AWAITING, "--etag", "f" * 64]) == 2
    assert "the plan was revised since you read it" in capsys.readouterr().err
    assert fake.decisions == []


HOSTILE = "\x1b]0;owned\x07\x1b[2J\x9b31m\rE\x00vil\x7f"  # retitle, clear, C1 CSI, CR, NUL, DEL


class HostileGateway(FakeGateway):
    """A gateway (or whoever sits in its place) whose text would drive the terminal."""

    def CreateWorkflow(self, request: Any, context: grpc.ServicerContext) -> Any:
        plan = request.plan
        return api.CreateWorkflowResponse(
            workflow=pb.Workflow(workflow_id=WF, title=HOSTILE, plan=plan, created_by=HOSTILE)
        )

    def GetWorkflow(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort_with_status(to_rich_status(NotFound(f"no workflow {HOSTILE}")))

    def WatchStatus(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self.watches = getattr(self, "watches", 0) + 1
        if self.watches == 1:  # (the watch reconnects, and says why: the server's words)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"going away {HOSTILE}")
        yield from super().WatchStatus(request, context)

    def ExportFindings(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        data = f"finding_id,title\r\nf1,{HOSTILE} é\r\n".encode()
        for at in range(0, len(data), 7):  # (chunks that split the escapes and the é)
            yield api.ExportFindingsResponse(data=data[at : at + 7])


class TerminalOut(io.TextIOWrapper):
    """Standard output on a terminal (it has a byte buffer, as a real one does)."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", write_through=True)

    def isatty(self) -> bool:
        return True

    def shown(self) -> str:
        return cast(io.BytesIO, self.buffer).getvalue().decode()


def test_the_cli_strips_terminal_control_characters_from_what_the_server_sends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    fake = HostileGateway()
    fake.final = S.WORKFLOW_STATUS_FAILED  # type: ignore[assignment]
    api_grpc.add_WorkflowServiceServicer_to_server(fake, server)
    target = f"127.0.0.1:{server.add_insecure_port(f'127.0.0.1:{demo.free_port()}')}"
    server.start()
    try:
        cli.main(["--target", target, "submit", "--sample", "--title", "t"])
        cli.main(["--target", target, "get", WF])
        cli.main(["--target", target, "watch", WF])
    finally:
        server.stop(None)
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "owned" in shown and "Evil" in shown  # the text is shown, its controls are not
    assert "going away" in shown  # (the reconnection's note)
    assert controls_in(shown) == []


def controls_in(shown: str) -> list[str]:
    return [c for c in shown if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]


@pytest.mark.parametrize("terminal", [True, False])
def test_an_export_on_a_terminal_is_shown_without_control_characters_and_into_a_pipe_as_it_is(
    terminal: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_grpc.add_WorkflowServiceServicer_to_server(HostileGateway(), server)
    target = f"127.0.0.1:{server.add_insecure_port(f'127.0.0.1:{demo.free_port()}')}"
    server.start()
    out = TerminalOut()
    if not terminal:
        monkeypatch.setattr(out, "isatty", lambda: False)
    monkeypatch.setattr("sys.stdout", out)
    try:
        assert cli.main(["--target", target, "findings", WF, "--format", "csv"]) == 0
    finally:
        server.stop(None)
    expected = f"finding_id,title\r\nf1,{HOSTILE} é\r\n"
    if terminal:
        assert out.shown() == render.printable(expected)
        assert "owned" in out.shown() and "é" in out.shown() and controls_in(out.shown()) == []
    else:
        assert out.shown() == expected  # (a file gets the export's bytes)


def test_json_uses_proto_field_names_and_numbers_for_counts() -> None:
    """The same JSON in every command: snake_case names, 64-bit counts and whole numbers as
    numbers (proto3 JSON would write "7" and 3.0), timestamps as RFC 3339."""
    verified = api.VerifyTrailResponse(intact=True, events_checked=7, head_sequence=7, signature_checked=True)
    expected = {"intact": True, "events_checked": 7, "head_sequence": 7, "first_bad_sequence": 0}
    assert expected.items() <= json.loads(render.to_json(verified)).items()
    workflow = pb.Workflow(workflow_id=WF, last_sequence=2**40, plan=[pb.PlanStep(procedure="p")])
    workflow.result.update({"rows": 3, "share": 0.5, "nested": {"count": 2}})
    workflow.created_at.FromSeconds(1_700_000_000)
    data = json.loads(render.to_json_line(workflow))
    assert (data["workflow_id"], data["last_sequence"]) == (WF, 2**40)
    assert data["result"] == {"rows": 3, "share": 0.5, "nested": {"count": 2}}
    assert data["created_at"] == "2023-11-14T22:13:20Z"
    assert data["plan"][0]["procedure"] == "p" and "workflowId" not in data

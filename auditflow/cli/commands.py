"""The subcommands that call the gateway (all but `demo`)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format

from auditflow import convert, statuses, synthetic
from auditflow.cli import render
from auditflow.cli.client import CliError, Metadata, auth_metadata, exit_code_for, watch
from auditflow.procedures import AUDIT_PROCEDURES
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as api
from auditflow.v1 import workflow_service_pb2_grpc as api_grpc


@dataclass
class Context:
    """What every command needs: a stub, the caller's credentials, and how to print."""

    stub: api_grpc.WorkflowServiceStub
    token: str | None = field(default=None, repr=False)
    json: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def metadata(self) -> Metadata:
        return auth_metadata(self.token)

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        """A remark for the human on stderr (stdout stays parseable)."""
        print(text, file=self.err, flush=True)


# --- plans -----------------------------------------------------------------------------------


def sample_ledger_path() -> str:
    """Absolute path of the packaged sample ledger (auditflow/samples/ledger.csv)."""
    ref = resources.files("auditflow").joinpath("samples", "ledger.csv")
    with resources.as_file(ref) as path:  # a real file for normal and editable installs
        return str(Path(path).resolve())


def sample_plan() -> list[pb.PlanStep]:
    """Summarise the sample ledger, rank its vendors, then run every audit procedure: one step a cycle."""
    path = sample_ledger_path()
    steps: list[dict[str, Any]] = [
        {"procedure": "ledger_summary", "parameters": {"path": path}},
        {"procedure": "vendor_totals", "parameters": {"path": path, "top": 5}},
    ]
    holidays = [d.isoformat() for d in synthetic.holidays(range(2026, 2028))]
    for name in AUDIT_PROCEDURES:
        parameters: dict[str, Any] = {"path": path}
        if name == "weekend_postings":
            parameters["holidays"] = holidays
        steps.append({"procedure": name, "parameters": parameters})
    return plan_from_data(steps, "sample")


def load_plan(path: str) -> list[pb.PlanStep]:
    """Read a plan file: a JSON list of {"procedure": str, "parameters": object}.

    Raises CliError with a message naming the file and the problem.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"plan file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read plan file {path!r}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"plan file {path!r} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    return plan_from_data(data, repr(path))


def plan_from_data(data: Any, source: str) -> list[pb.PlanStep]:
    where = f"plan {source}"
    if not isinstance(data, list):
        raise CliError(f'{where}: expected a JSON list of {{"procedure", "parameters"}} objects')
    if not data:
        raise CliError(f"{where}: the plan has no steps")
    plan = []
    for index, step in enumerate(data):
        if not isinstance(step, dict):
            raise CliError(f"{where}: step {index} is not a JSON object")
        unknown = set(step) - {"procedure", "parameters"}
        if unknown:
            raise CliError(f"{where}: step {index} has unknown keys: {', '.join(sorted(unknown))}")
        procedure = step.get("procedure")
        if not isinstance(procedure, str) or not procedure:
            raise CliError(f'{where}: step {index} needs a "procedure" name (a string)')
        parameters = step.get("parameters", {})
        if not isinstance(parameters, dict):
            raise CliError(f'{where}: step {index}: "parameters" must be a JSON object')
        plan.append(pb.PlanStep(procedure=procedure, parameters=convert.struct(parameters)))
    return plan


# --- commands --------------------------------------------------------------------------------


def submit(ctx: Context, args: argparse.Namespace) -> int:
    plan = sample_plan() if args.sample else load_plan(args.plan)
    title = args.title or ("Sample ledger audit" if args.sample else Path(args.plan).stem)
    request = api.CreateWorkflowRequest(
        title=title, plan=plan, max_cycles=args.max_cycles, request_id=args.request_id or ""
    )
    workflow = ctx.stub.CreateWorkflow(request, metadata=ctx.metadata).workflow
    if args.quiet:
        ctx.print(workflow.workflow_id)
    elif ctx.json:
        ctx.print(render.to_json(workflow))
    else:
        ctx.print(workflow.workflow_id)
        ctx.note(
            f"submitted {len(workflow.plan)}-step plan {workflow.title!r} as {workflow.created_by}; "
            f"status {render.status_name(workflow.status)}\n"
            f"next, as an approver: auditflow --token-file APPROVER_TOKEN_FILE approve {workflow.workflow_id}"
        )
    return 0


def approve(ctx: Context, args: argparse.Namespace) -> int:
    request = api.ApproveRequest(workflow_id=args.workflow_id, comment=args.comment, request_id=args.request_id)
    response = ctx.stub.Approve(request, metadata=ctx.metadata)
    ctx.print(render.to_json(response) if ctx.json else render.approve_summary(response))
    return 0


def reject(ctx: Context, args: argparse.Namespace) -> int:
    request = api.RejectRequest(workflow_id=args.workflow_id, comment=args.comment, request_id=args.request_id)
    workflow = ctx.stub.Reject(request, metadata=ctx.metadata).workflow
    if ctx.json:
        ctx.print(render.to_json(workflow))
    else:
        ctx.print(f"{workflow.workflow_id} {render.status_name(workflow.status)} by {workflow.decided_by}")
    return 0


def cancel(ctx: Context, args: argparse.Namespace) -> int:
    request = api.CancelWorkflowRequest(workflow_id=args.workflow_id, reason=args.reason)
    response = ctx.stub.CancelWorkflow(request, metadata=ctx.metadata)
    if ctx.json:
        ctx.print(render.to_json(response))
    elif response.pending:
        ctx.print(
            f"{response.workflow.workflow_id} cancellation requested; it takes effect between cycles "
            f"(status {render.status_name(response.workflow.status)})"
        )
    else:
        ctx.print(f"{response.workflow.workflow_id} {render.status_name(response.workflow.status)}")
    return 0


def whoami(ctx: Context, args: argparse.Namespace) -> int:
    me = ctx.stub.WhoAmI(api.WhoAmIRequest(), metadata=ctx.metadata)
    if ctx.json:
        ctx.print(render.to_json(me))
    else:
        ctx.print(f"{me.principal} ({', '.join(me.roles) or 'no role'}; authenticated by {me.authenticated_by})")
    return 0


def get(ctx: Context, args: argparse.Namespace) -> int:
    workflow = ctx.stub.GetWorkflow(api.GetWorkflowRequest(workflow_id=args.workflow_id), metadata=ctx.metadata)
    ctx.print(render.to_json(workflow.workflow) if ctx.json else render.workflow_summary(workflow.workflow))
    return 0


def list_(ctx: Context, args: argparse.Namespace) -> int:
    wanted = args.status or []
    workflows: list[pb.Workflow] = []
    token = args.page_token
    while True:
        request = api.ListWorkflowsRequest(page_size=args.page_size, page_token=token, statuses=wanted)
        response = ctx.stub.ListWorkflows(request, metadata=ctx.metadata)
        workflows.extend(response.workflows)
        token = response.next_page_token
        if not token or not args.all:
            break
    if ctx.json:
        data = {
            "workflows": [json_format.MessageToDict(w, always_print_fields_with_no_presence=True) for w in workflows],
            "nextPageToken": token,
        }
        ctx.print(json.dumps(data, indent=2))
        return 0
    if workflows:
        ctx.print(render.workflow_table(workflows))
    else:
        ctx.note("no workflows")
    if token:
        ctx.note(f"more: --page-token {token} (or --all)")
    return 0


def watch_workflow(ctx: Context, workflow_id: str, after: int = 0, *, give_up_after: float = 60.0) -> pb.StatusSnapshot:
    """Follow a workflow to its end, showing progress; return the final snapshot."""
    if ctx.json:
        return watch(
            ctx.stub,
            workflow_id,
            metadata=ctx.metadata,
            after_sequence=after,
            on_event=lambda event, snapshot: ctx.print(
                render.to_json_line(api.WatchStatusResponse(event=event, snapshot=snapshot))
            ),
            on_heartbeat=lambda snapshot: None,
            on_reconnect=lambda text, delay: ctx.note(f"watch: {text}"),
            give_up_after=give_up_after,
        )
    view = render.ProgressView(ctx.out)
    try:
        return watch(
            ctx.stub,
            workflow_id,
            metadata=ctx.metadata,
            after_sequence=after,
            on_event=view.event,
            on_heartbeat=view.refresh,
            on_reconnect=lambda text, delay: view.note(f"watch: {text}"),
            give_up_after=give_up_after,
        )
    finally:
        view.close()


def end_detail(snapshot: pb.StatusSnapshot) -> str:
    """Why a workflow did not complete: its error, else its last message."""
    if snapshot.HasField("error") and (snapshot.error.reason or snapshot.error.message):
        return render.error_text(snapshot.error)
    return snapshot.last_message


def report_end(ctx: Context, snapshot: pb.StatusSnapshot) -> int:
    """Say how the workflow ended; the exit code (0 COMPLETED, 1 otherwise)."""
    if ctx.json:
        return exit_code_for(snapshot.status)
    name = render.status_name(snapshot.status)
    if snapshot.status == pb.WorkflowStatus.WORKFLOW_STATUS_COMPLETED:
        ctx.print(f"{snapshot.workflow_id} {name} after {snapshot.cycle} cycle(s)")
    else:
        detail = end_detail(snapshot)
        ctx.note(f"{snapshot.workflow_id} {name}" + (f": {detail}" if detail else ""))
    return exit_code_for(snapshot.status)


def watch_cmd(ctx: Context, args: argparse.Namespace) -> int:
    snapshot = watch_workflow(ctx, args.workflow_id, args.after, give_up_after=args.give_up_after)
    return report_end(ctx, snapshot)


def status_arg(text: str) -> pb.WorkflowStatus.ValueType:
    """argparse type for --status: 'running', 'RUNNING' or 'WORKFLOW_STATUS_RUNNING'."""
    try:
        value = statuses.from_name(text)
    except ValueError:
        known = ", ".join(sorted(render.status_name(s) for s in pb.WorkflowStatus.values() if s))
        raise argparse.ArgumentTypeError(f"unknown status {text!r} (known: {known})") from None
    if value == pb.WorkflowStatus.WORKFLOW_STATUS_UNSPECIFIED:
        raise argparse.ArgumentTypeError("UNSPECIFIED is not a status to filter on")
    return pb.WorkflowStatus.ValueType(value)

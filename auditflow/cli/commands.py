"""The subcommands that call the gateway (all but `demo`)."""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc

from auditflow import convert, statuses, trail
from auditflow.cli import render
from auditflow.cli.client import CliError, Metadata, auth_metadata, exit_code_for, format_rpc_error, watch
from auditflow.sample import sample_plan
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as api
from auditflow.v1 import workflow_service_pb2_grpc as api_grpc

EXIT_DECLINED = 1  # the person answered no: nothing was sent


@dataclass
class Context:
    """What every command needs: a stub, the caller's credentials, and how to print."""

    stub: api_grpc.WorkflowServiceStub
    token: str | None = field(default=None, repr=False)
    json: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    stdin: TextIO = field(default_factory=lambda: sys.stdin)

    @property
    def metadata(self) -> Metadata:
        return auth_metadata(self.token)

    def print(self, text: str = "") -> None:
        print(render.printable(text), file=self.out, flush=True)

    def note(self, text: str) -> None:
        """A remark for the human on stderr (stdout stays parseable)."""
        print(render.printable(text), file=self.err, flush=True)

    @property
    def interactive(self) -> bool:
        """Whether a person can answer a question (standard input is a terminal)."""
        return self.stdin.isatty()

    def ask(self, question: str) -> str:
        print(question, end="", file=self.err, flush=True)
        return self.stdin.readline()


# --- plans -----------------------------------------------------------------------------------


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
        title=title,
        plan=plan,
        max_cycles=args.max_cycles,
        request_id=args.request_id or "",
        required_approvals=args.approvals,
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
            f"next, as an approver: auditflow --token-file APPROVER_TOKEN_FILE approve {workflow.workflow_id} "
            f"--etag {workflow.etag}"
        )
    return 0


def reviewed(ctx: Context, args: argparse.Namespace, verb: str) -> str | None:
    """The etag a decision is bound to: the revision a person reviewed, or one a script names.

    A script passes `--yes` with `--etag` (the revision it read earlier) and nothing is asked.
    Otherwise the plan is fetched and shown whole (steps, parameters, data fingerprints,
    approvals so far) and the person confirms on a terminal; an `--etag` that is no longer the
    plan's is refused before anything is sent. Without a terminal and without `--yes`, nothing
    is sent. None when the person declined."""
    if args.yes:
        if not args.etag:
            raise CliError("--yes needs --etag ETAG: the etag of the revision you reviewed (auditflow get ID shows it)")
        return str(args.etag)
    workflow = ctx.stub.GetWorkflow(
        api.GetWorkflowRequest(workflow_id=args.workflow_id), metadata=ctx.metadata
    ).workflow
    ctx.note(render.review_text(workflow))
    if args.etag and args.etag != workflow.etag:
        raise CliError(
            f"the plan was revised since you read it (your etag {args.etag[:12]}, now {workflow.etag[:12]} "
            f"at revision {workflow.revision}): review it above, then decide again"
        )
    if not ctx.interactive:
        raise CliError(
            f"no terminal to confirm on: review the plan above, then run "
            f"auditflow {verb} {workflow.workflow_id} --etag {workflow.etag} --yes"
        )
    question = f"{verb} revision {workflow.revision} of {workflow.workflow_id} (etag {workflow.etag[:12]})? [y/N] "
    if ctx.ask(question).strip().lower() not in ("y", "yes"):
        ctx.note("nothing sent")
        return None
    return workflow.etag


def approve(ctx: Context, args: argparse.Namespace) -> int:
    etag = reviewed(ctx, args, "approve")
    if etag is None:
        return EXIT_DECLINED
    request = api.ApproveRequest(
        workflow_id=args.workflow_id, comment=args.comment, request_id=args.request_id, etag=etag
    )
    response = ctx.stub.Approve(request, metadata=ctx.metadata)
    ctx.print(render.to_json(response) if ctx.json else render.approve_summary(response))
    return 0


def reject(ctx: Context, args: argparse.Namespace) -> int:
    if not args.comment.strip():
        raise CliError("--comment is required: say why the plan is rejected")
    etag = reviewed(ctx, args, "reject")
    if etag is None:
        return EXIT_DECLINED
    request = api.RejectRequest(
        workflow_id=args.workflow_id, comment=args.comment, request_id=args.request_id, etag=etag
    )
    workflow = ctx.stub.Reject(request, metadata=ctx.metadata).workflow
    if ctx.json:
        ctx.print(render.to_json(workflow))
    else:
        ctx.print(f"{workflow.workflow_id} {render.status_name(workflow.status)} by {workflow.decided_by}")
    return 0


def request_changes(ctx: Context, args: argparse.Namespace) -> int:
    etag = reviewed(ctx, args, "request-changes")
    if etag is None:
        return EXIT_DECLINED
    request = api.RequestChangesRequest(workflow_id=args.workflow_id, reason=args.reason, etag=etag)
    workflow = ctx.stub.RequestChanges(request, metadata=ctx.metadata).workflow
    ctx.print(render.to_json(workflow) if ctx.json else f"{workflow.workflow_id} {render.status_name(workflow.status)}")
    return 0


def revise(ctx: Context, args: argparse.Namespace) -> int:
    """A new revision of one's own plan (or, with no --plan and no --title, its data refreshed)."""
    etag = (
        args.etag
        or ctx.stub.GetWorkflow(
            api.GetWorkflowRequest(workflow_id=args.workflow_id), metadata=ctx.metadata
        ).workflow.etag
    )
    plan = load_plan(args.plan) if args.plan else []
    request = api.ReviseWorkflowRequest(
        workflow_id=args.workflow_id,
        etag=etag,
        title=args.title,
        plan=plan,
        max_cycles=args.max_cycles,
        reason=args.reason,
        request_id=args.request_id,
    )
    response = ctx.stub.ReviseWorkflow(request, metadata=ctx.metadata)
    if ctx.json:
        ctx.print(render.to_json(response))
        return 0
    workflow = response.workflow
    ctx.print(f"{workflow.workflow_id} revision {workflow.revision}, etag {workflow.etag}")
    if response.dismissed_approvers:
        ctx.note("approvals dismissed: " + ", ".join(response.dismissed_approvers))
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
        if me.HasField("limits"):
            ctx.print(limits_text(me.limits))
    return 0


def limits_text(limits: api.CallerLimits) -> str:
    """The caller's limits in one line (0: no limit)."""

    def rate(kind: str, r: api.CallRate) -> str:
        return f"{kind} {r.per_second:g}/s (bursts of {r.burst})" if r.per_second else f"{kind} unlimited"

    def of(used: int, most: int) -> str:
        return f"{used} of {most}" if most else f"{used} (no limit)"

    rates = ", ".join(
        rate(kind, r)
        for kind, r in (("writes", limits.write), ("reads", limits.read), ("streams opened", limits.watch))
    )
    size = f"{limits.max_plan_bytes} bytes" if limits.max_plan_bytes else "any size"
    return (
        f"limits: {rates}; open streams {of(limits.open_streams, limits.max_streams)}; plans awaiting approval "
        f"{of(limits.pending_plans, limits.max_pending_plans)}; plans of {size}, at most {limits.max_plan_steps} "
        f"steps, {limits.max_parameters_bytes} bytes of parameters a step"
    )


def get(ctx: Context, args: argparse.Namespace) -> int:
    workflow = ctx.stub.GetWorkflow(api.GetWorkflowRequest(workflow_id=args.workflow_id), metadata=ctx.metadata)
    if ctx.json:
        ctx.print(render.to_json(workflow.workflow))
        return 0
    ctx.print(render.workflow_summary(workflow.workflow))
    if args.findings:
        first_findings(ctx, workflow.workflow.workflow_id, args.findings)
    return 0


def first_findings(ctx: Context, workflow_id: str, count: int) -> None:
    """The first page of findings (high first, then by amount), and how to get the rest."""
    request = api.ListFindingsRequest(workflow_id=workflow_id, page_size=count)
    try:
        page = ctx.stub.ListFindings(request, metadata=ctx.metadata)
    except grpc.RpcError as exc:  # the workflow is shown; its findings may come later
        ctx.note(f"(findings not available now: {format_rpc_error(exc)})")
        return
    if not page.total:
        return
    ctx.print(f"findings      {len(page.findings)} of {page.total}, high first, then by amount")
    ctx.print(render.findings_text(page.findings))
    if page.next_page_token:
        ctx.note(f"all of them: auditflow findings {workflow_id} (or --format csv -o findings.csv)")


def findings(ctx: Context, args: argparse.Namespace) -> int:
    filter_ = pb.FindingsFilter(
        steps=args.step or [], procedures=args.procedure or [], severities=args.severity or [], order=args.order
    )
    if args.format == "text":
        return _list_findings(ctx, args.workflow_id, filter_, args.limit)
    return _export_findings(ctx, args.workflow_id, filter_, args.format, args.output)


def _list_findings(ctx: Context, workflow_id: str, filter_: pb.FindingsFilter, limit: int) -> int:
    """Page by page, printed as they come (one JSON object a line with --json)."""
    token, shown, total = "", 0, 0
    while True:
        size = min(1000, limit - shown) if limit else 1000
        request = api.ListFindingsRequest(workflow_id=workflow_id, filter=filter_, page_size=size, page_token=token)
        page = ctx.stub.ListFindings(request, metadata=ctx.metadata)
        total = page.total
        if ctx.json:
            for finding in page.findings:
                ctx.print(render.to_json_line(finding))
        elif page.findings:
            ctx.print(render.findings_text(page.findings))
        shown += len(page.findings)
        token = page.next_page_token
        if not token or (limit and shown >= limit):
            break
    if not ctx.json:
        ctx.note(f"{shown} of {total} finding{'s' if total != 1 else ''}")
    return 0


def _export_to_stdout(ctx: Context, data: Iterator[bytes]) -> None:
    """An export on standard output: into a file or a pipe, its bytes as they are; on a
    terminal, shown without its control characters (a finding's text is the ledger's, and
    an escape sequence in it would drive the terminal)."""
    sink = None if ctx.out.isatty() else getattr(ctx.out, "buffer", None)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # (a chunk may end mid-character)
    for piece in data:
        if sink is not None:
            sink.write(piece)
        else:
            ctx.out.write(render.printable(decoder.decode(piece)))
    if sink is None:
        ctx.out.write(render.printable(decoder.decode(b"", final=True)))
    ctx.out.flush()


def _export_findings(ctx: Context, workflow_id: str, filter_: pb.FindingsFilter, kind: str, output: str) -> int:
    """The file streamed to `output` (written aside, renamed when whole) or to stdout."""
    if not output and kind == "parquet" and ctx.out.isatty():
        raise CliError("a Parquet file is binary: give -o FILE (or redirect stdout)")
    request = api.ExportFindingsRequest(workflow_id=workflow_id, filter=filter_, format=kind)
    chunks = ctx.stub.ExportFindings(request, metadata=ctx.metadata)
    if not output:
        _export_to_stdout(ctx, (chunk.data for chunk in chunks))
        return 0
    target = Path(output)
    partial = target.with_name(target.name + ".part")
    try:
        with partial.open("wb") as out:
            written = sum(out.write(chunk.data) for chunk in chunks)
        partial.replace(target)
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    ctx.note(f"wrote {written} bytes of {kind} to {output}")
    return 0


def list_(ctx: Context, args: argparse.Namespace) -> int:
    wanted = args.status or []
    workflows: list[pb.Workflow] = []
    token = args.page_token
    while True:
        request = api.ListWorkflowsRequest(
            page_size=args.page_size,
            page_token=token,
            statuses=wanted,
            awaiting_my_approval=args.awaiting_me,
            created_by_me=args.mine,
            title_contains=args.title,
        )
        response = ctx.stub.ListWorkflows(request, metadata=ctx.metadata)
        workflows.extend(response.workflows)
        token = response.next_page_token
        if not token or not args.all:
            break
    if ctx.json:
        data = {"workflows": [render.to_data(w) for w in workflows], "next_page_token": token}
        ctx.print(json.dumps(data, indent=2, ensure_ascii=False))
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


def verify(ctx: Context, args: argparse.Namespace) -> int:
    """The server's verification of the trail, then this client's own: the events replayed
    from the log, every hash recomputed here, and a signature checked with --public-key."""
    workflow_id = args.workflow_id
    server = ctx.stub.VerifyTrail(api.VerifyTrailRequest(workflow_id=workflow_id), metadata=ctx.metadata)
    workflow = ctx.stub.GetWorkflow(api.GetWorkflowRequest(workflow_id=workflow_id), metadata=ctx.metadata).workflow
    events = replay(ctx, workflow_id, workflow.last_sequence)
    local = trail.check(events)
    keys = trail.load_public_keys(args.public_key or [])
    signature = "not signed"
    last = events[-1] if events else None
    if last is not None and last.signature:
        key = keys.get(last.signing_key_id)
        if key is None:
            signature = f"signed by key {last.signing_key_id} (give --public-key to check it here)"
        elif trail.signature_valid(key, last):
            signature = f"signed by key {last.signing_key_id}: valid"
        else:
            signature = f"signed by key {last.signing_key_id}: NOT VALID"
            local = trail.Checked(
                local.events,
                local.head_sequence,
                local.head_hash,
                trail.Problem(last.sequence, "the signature does not match the trail"),
            )
    agree = local.head_hash == server.head_hash
    if ctx.json:
        ctx.print(render.to_json(server))
    else:
        ctx.print(render.verify_text(server, local, signature, agree))
    return 0 if server.intact and local.problem is None and agree else 1


def replay(ctx: Context, workflow_id: str, last_sequence: int) -> list[pb.WorkflowEvent]:
    """Every event of the workflow up to `last_sequence`, from its log (WatchStatus from 0)."""
    events: list[pb.WorkflowEvent] = []
    if last_sequence == 0:
        return events
    call = ctx.stub.WatchStatus(api.WatchStatusRequest(workflow_id=workflow_id), metadata=ctx.metadata)
    try:
        for message in call:
            if message.HasField("event"):
                events.append(message.event)
                if message.event.sequence >= last_sequence:
                    break
    finally:
        call.cancel()  # type: ignore[no-untyped-call]
    return events

"""Pure text rendering for the CLI: progress bar, event lines, tables, summaries, JSON.

Nothing here talks to the network, so all of it is unit-tested directly.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC
from typing import Any, TextIO, cast

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from auditflow import convert, statuses
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as api

BAR_WIDTH = 24
# What a terminal would act on rather than show: C0 controls but tab and newline (ESC and
# carriage return included), DEL and the C1 controls (0x9b alone starts a CSI sequence).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text a server sent, safe to write to a terminal: its control characters removed, so
    that a title, a comment or an error cannot move the cursor, recolour, retitle the window
    or hide what came before."""
    return _CONTROLS.sub("", text)


def status_name(status: int) -> str:
    try:
        return statuses.name(status)
    except ValueError:
        return f"STATUS_{status}"


def event_type_name(event_type: int) -> str:
    try:
        return pb.EventType.Name(event_type).removeprefix("EVENT_TYPE_")  # type: ignore[arg-type]
    except ValueError:
        return f"EVENT_{event_type}"


def timestamp(ts: timestamp_pb2.Timestamp, *, present: bool = True) -> str:
    """ISO 8601 in UTC to the millisecond, or '-' when unset."""
    if not present or (ts.seconds == 0 and ts.nanos == 0):
        return "-"
    return ts.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# The 64-bit integer types, which proto3's JSON mapping writes as strings.
INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def to_data(message: Message) -> dict[str, Any]:
    """A message as the CLI's `--json` prints it, the same in every command: the proto field
    names (snake_case, as in the .proto and the rest of the CLI), fields with default values
    included, counts as numbers (proto3 JSON writes 64-bit integers as strings, and a Struct's
    whole numbers as 3.0); timestamps stay RFC 3339 strings."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    whole: dict[str, Any] = convert.whole_numbers(_int64_numbers(cast(Descriptor, message.DESCRIPTOR), data))
    return whole


def _int64_numbers(descriptor: Descriptor, data: dict[str, Any]) -> dict[str, Any]:
    for field in descriptor.fields:
        if field.name in data:
            data[field.name] = _field_value(field, data[field.name])
    return data


def _field_value(field: FieldDescriptor, value: Any) -> Any:
    if field.type in INT64:
        return [int(v) for v in value] if isinstance(value, list) else int(value)
    kind = field.message_type
    if kind is None or kind.full_name.startswith("google.protobuf."):  # (well-known types keep their mapping)
        return value
    if kind.GetOptions().map_entry:
        entry = kind.fields_by_name["value"]
        return {key: _field_value(entry, v) for key, v in value.items()}
    if isinstance(value, list):
        return [_int64_numbers(kind, v) for v in value]
    return _int64_numbers(kind, value)


def to_json(message: Message) -> str:
    return json.dumps(to_data(message), indent=2, ensure_ascii=False)


def to_json_line(message: Message) -> str:
    return json.dumps(to_data(message), separators=(",", ":"), ensure_ascii=False)


def pretty(data: Any) -> str:
    """Indented JSON; whole numbers shown as such (a protobuf Struct holds every number as a double)."""
    return json.dumps(convert.whole_numbers(data), indent=2, sort_keys=True, ensure_ascii=False)


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """'[#########---------------]' for done/total; an empty bar when the total is unknown."""
    if width < 1:
        return "[]"
    filled = 0 if total <= 0 else min(width, max(0, done * width // total))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def progress_line(snapshot: pb.StatusSnapshot, columns: int = 100) -> str:
    """One line for the live view: status, cycle/max_cycles, bar, done/total, last message.

    The result never exceeds `columns` characters (the message is cut with an ellipsis).
    """
    done, total = snapshot.progress.done, snapshot.progress.total
    max_cycles = str(snapshot.max_cycles) if snapshot.max_cycles else "?"
    head = f"{status_name(snapshot.status):<17} cycle {snapshot.cycle}/{max_cycles}  {bar(done, total)} {done}/{total}"
    message = " ".join(snapshot.last_message.split())
    line = f"{head}  {message}" if message else head
    return truncate(line, columns)


def truncate(text: str, columns: int) -> str:
    if columns <= 0:
        return ""
    if len(text) <= columns:
        return text
    if columns == 1:
        return text[:1]
    return text[: columns - 1] + "…"


def event_line(event: pb.WorkflowEvent) -> str:
    """'#7 2026-01-01T10:00:00.000Z CYCLE_COMPLETED RUNNING cycle 2 1/3 by processor: message'."""
    parts = [
        f"#{event.sequence}",
        timestamp(event.time, present=event.HasField("time")),
        event_type_name(event.type),
        status_name(event.status),
    ]
    if event.cycle:
        parts.append(f"cycle {event.cycle}")
    if event.HasField("progress") and event.progress.total:
        parts.append(f"{event.progress.done}/{event.progress.total}")
    if event.actor:
        parts.append(f"by {event.actor}")
    line = " ".join(parts)
    message = " ".join(event.message.split())
    return f"{line}: {message}" if message else line


def error_text(error: pb.RunError) -> str:
    if error.reason and error.message:
        return f"{error.reason}: {error.message}"
    return error.reason or error.message


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain left-aligned text table, columns two spaces apart."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)) for line in [headers, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def workflow_row(workflow: pb.Workflow) -> list[str]:
    progress = f"{workflow.progress.done}/{workflow.progress.total}" if workflow.progress.total else "-"
    cycles = f"{workflow.cycle}/{workflow.max_cycles}" if workflow.max_cycles else str(workflow.cycle)
    return [
        workflow.workflow_id,
        status_name(workflow.status),
        truncate(workflow.title, 40),
        workflow.created_by,
        progress,
        cycles,
        timestamp(workflow.updated_at, present=workflow.HasField("updated_at")),
    ]


WORKFLOW_HEADERS = ("ID", "STATUS", "TITLE", "CREATED BY", "PROGRESS", "CYCLE", "UPDATED")


def workflow_table(workflows: Sequence[pb.Workflow]) -> str:
    return table(WORKFLOW_HEADERS, [workflow_row(w) for w in workflows])


def workflow_summary(workflow: pb.Workflow) -> str:
    """Human-readable `get` output."""
    flags = []
    if workflow.is_processing:
        flags.append("processing")
    if workflow.is_completed:
        flags.append("finished")
    status = status_name(workflow.status) + (f" ({', '.join(flags)})" if flags else "")
    lines = [
        f"workflow      {workflow.workflow_id}",
        f"title         {workflow.title}",
        f"status        {status}",
        f"created       by {workflow.created_by or '-'} at "
        f"{timestamp(workflow.created_at, present=workflow.HasField('created_at'))}",
    ]
    lines.append(f"etag          {workflow.etag or '-'}")
    lines += approval_lines(workflow)
    if workflow.status == pb.WORKFLOW_STATUS_REJECTED and workflow.decided_by:
        decided = f"rejected by {workflow.decided_by}"
        if workflow.decision_comment:
            decided += f": {workflow.decision_comment}"
        lines.append(f"decision      {decided}")
    max_cycles = workflow.max_cycles or "?"
    lines += [
        f"progress      {bar(workflow.progress.done, workflow.progress.total)} "
        f"{workflow.progress.done}/{workflow.progress.total} steps, cycle {workflow.cycle}/{max_cycles}",
        f"updated       {timestamp(workflow.updated_at, present=workflow.HasField('updated_at'))}"
        f"  (event #{workflow.last_sequence})",
    ]
    if workflow.orchestrator:
        lines.append(f"orchestrator  {workflow.orchestrator}")
    if workflow.last_message:
        lines.append(f"message       {workflow.last_message}")
    if workflow.HasField("error") and (workflow.error.reason or workflow.error.message):
        lines.append(f"error         {error_text(workflow.error)}")
    lines.append("plan")
    for index, step in enumerate(workflow.plan, start=1):
        parameters = json_format.MessageToDict(step.parameters)
        lines.append(f"  {index}. {step.procedure} {json.dumps(parameters, sort_keys=True)}")
    if workflow.HasField("result"):
        lines.append("result")
        lines += ["  " + line for line in result_text(json_format.MessageToDict(workflow.result)).splitlines()]
    return "\n".join(lines)


def result_text(result: dict[str, Any]) -> str:
    """A plan's result: each audit step's summary on a line, any other step result as JSON.
    Amounts at stake are per procedure: an entry flagged by several counts in each, so they
    are not added up into a plan total."""
    steps = result.get("steps")
    if not isinstance(steps, list) or not any(_audit_summary(step.get("result")) for step in steps):
        return pretty(result)
    parts = []
    for index, step in enumerate(steps, start=1):
        name, data = step.get("procedure", "?"), step.get("result")
        summary = _audit_summary(data)
        parts.append(f"{index}. {name}: " + step_summary(summary) if summary else f"{index}. {name}\n" + pretty(data))
    parts.append("(amounts at stake are per procedure: an entry flagged by several counts in each)")
    return "\n".join(parts)


def _audit_summary(data: Any) -> dict[str, Any] | None:
    summary = data.get("summary") if isinstance(data, dict) else None
    return summary if isinstance(summary, dict) and "findings" in summary else None


def step_summary(summary: dict[str, Any]) -> str:
    """'12 findings (2 high, 10 low), 3400.00 at stake'"""
    count = int(summary.get("findings", 0))
    if not count:
        return "no findings"
    by = summary.get("by_severity") or {}
    split = ", ".join(f"{int(by[s])} {s}" for s in ("high", "medium", "low") if by.get(s))
    text = f"{count} finding{'s' if count != 1 else ''}" + (f" ({split})" if split else "")
    return text + f", {summary.get('amount_at_stake', '?')} at stake"


def findings_text(findings: Sequence[pb.Finding], width: int | None = None) -> str:
    """Findings one after the other, each explanation whole and wrapped (never cut):

    f12  high  12500.00  step 3 duplicate_payments  JE-1, JE-2
         Same vendor, amount and invoice within 7 days: ...
    """
    columns = width or max(40, shutil.get_terminal_size((100, 24)).columns - 1)
    blocks = []
    pad = max((len(f.finding_id) for f in findings), default=2) + 2
    for f in findings:
        ids = ", ".join(f.entry_ids[:5]) + (f" +{f.entry_count - 5}" if f.entry_count > 5 else "")
        head = f"{f.finding_id:<{pad}}{f.severity:<8}{f.amount:>14}  step {f.step} {f.procedure}  {ids or '-'}"
        body = textwrap.wrap(" ".join(f.explanation.split()), columns - pad) or [""]
        blocks.append("\n".join([head, *(" " * pad + line for line in body)]))
    return "\n".join(blocks)


def approval_lines(workflow: pb.Workflow) -> list[str]:
    """Who approved, and how many more are needed while the plan awaits approval."""
    required = max(workflow.required_approvals, 1)
    given = list(workflow.approvals)
    lines = []
    if required > 1:
        head = f"approvals     {len(given)} of {required}"
        if workflow.status == pb.WORKFLOW_STATUS_AWAITING_APPROVAL and len(given) < required:
            head += f" ({required - len(given)} more needed, none of them the creator)"
        lines.append(head)
        for approval in given:
            when = timestamp(approval.time, present=approval.HasField("time"))
            lines.append(
                f"  approved by {approval.approver} at {when}" + (f": {approval.comment}" if approval.comment else "")
            )
    elif workflow.decided_by and workflow.status != pb.WORKFLOW_STATUS_REJECTED:
        comment = f": {workflow.decision_comment}" if workflow.decision_comment else ""
        lines.append(f"decision      approved by {workflow.decided_by}{comment}")
    return lines


def review_text(workflow: pb.Workflow) -> str:
    """Everything a decision is about, shown before it is sent: the plan's revision and etag,
    each step's procedure and parameters, each data file's fingerprint (and whether it changed
    since), and the approvals so far."""
    lines = [
        f"workflow      {workflow.workflow_id}  {workflow.title!r}",
        f"status        {status_name(workflow.status)}",
        f"submitted by  {workflow.created_by}",
        f"revision      {workflow.revision or 1}, etag {workflow.etag}",
    ]
    if workflow.HasField("changes_requested") and workflow.status == pb.WORKFLOW_STATUS_CHANGES_REQUESTED:
        asked = workflow.changes_requested
        lines.append(f"changes       requested by {asked.requested_by}: {asked.reason}")
    lines.append(f"max cycles    {workflow.max_cycles}")
    lines.append("plan")
    for index, step in enumerate(workflow.plan, start=1):
        parameters = convert.whole_numbers(json_format.MessageToDict(step.parameters))
        lines.append(f"  {index}. {step.procedure} {json.dumps(parameters, sort_keys=True)}")
        for source in step.sources:
            lines.append("     " + source_line(source))
    required = max(workflow.required_approvals, 1)
    names = ", ".join(a.approver for a in workflow.approvals) or "none yet"
    lines.append(f"approvals     {len(workflow.approvals)} of {required} ({names})")
    return "\n".join(lines)


def source_line(source: pb.DataSource) -> str:
    """A data file's fingerprint in one line, with a warning when it no longer matches."""
    when = timestamp(source.modified_at, present=source.HasField("modified_at"))
    text = f"{source.parameter}={source.path}: {source.size_bytes} bytes, sha256 {source.sha256}, modified {when}"
    if source.changed:
        text += f"  WARNING: {source.changed}"
    return text


def verify_text(server: api.VerifyTrailResponse, local: Any, signature: str, agree: bool) -> str:
    """The server's verification of a trail and this client's own, side by side."""
    if server.intact:
        lines = [
            f"server: trail intact, {server.events_checked} events, head #{server.head_sequence} {server.head_hash}"
        ]
    else:
        where = f" at event {server.first_bad_sequence}" if server.first_bad_sequence else ""
        lines = [f"server: TRAIL BROKEN{where}: {server.problem}"]
    if server.signed:
        checked = "valid" if server.signature_checked and server.intact else "not checked (key unknown to the server)"
        lines.append(f"server: end signed by key {server.signing_key_id}: {checked}")
    if local.problem is None:
        lines.append(f"here:   {local.events} events recomputed, head #{local.head_sequence} {local.head_hash}")
    else:
        lines.append(f"here:   TRAIL BROKEN at event {local.problem.sequence}: {local.problem.text}")
    lines.append(f"here:   {signature}")
    if not agree:
        lines.append("the server's head and the one recomputed here differ")
    return "\n".join(lines)


def approve_summary(response: api.ApproveResponse, latency_ms: float | None = None) -> str:
    """The approve answer as the web UI shows it, one field a line."""
    lines = [
        f"workflow_id                    {response.workflow_id}",
        f"approved                       {str(response.approved).lower()}",
        f"background_processing_started  {str(response.background_processing_started).lower()}",
        f"processing_message             {response.processing_message}",
        f"workflow_status                {status_name(response.workflow_status)}",
        "updated_at                     " + timestamp(response.updated_at, present=response.HasField("updated_at")),
    ]
    if latency_ms is not None:
        lines.append(f"latency                        {latency_ms:.1f} ms")
    return "\n".join(lines)


class ProgressView:
    """Shows a watch: one line per event, plus (on a terminal) a live bar redrawn in place."""

    def __init__(self, out: TextIO | None = None, *, live: bool | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.live = self.out.isatty() if live is None else live
        self._bar_shown = False

    def _columns(self) -> int:
        return max(20, shutil.get_terminal_size((100, 24)).columns - 1)

    def _clear(self) -> None:
        if self._bar_shown:
            self.out.write("\r\x1b[2K")
            self._bar_shown = False

    def _draw(self, snapshot: pb.StatusSnapshot) -> None:
        if self.live:
            self._clear()
            self.out.write(printable(progress_line(snapshot, self._columns())))
            self._bar_shown = True
        self.out.flush()

    def event(self, event: pb.WorkflowEvent, snapshot: pb.StatusSnapshot) -> None:
        self._clear()
        self.out.write(printable(event_line(event)) + "\n")
        self._draw(snapshot)

    def refresh(self, snapshot: pb.StatusSnapshot) -> None:
        """A heartbeat: redraw the bar (terminal only); prints nothing otherwise."""
        if self.live:
            self._draw(snapshot)

    def note(self, text: str) -> None:
        """A remark between events (a reconnection), which may quote the server's words."""
        self._clear()
        self.out.write(printable(text) + "\n")
        self.out.flush()

    def close(self) -> None:
        if self._bar_shown:
            self.out.write("\n")
            self._bar_shown = False
        self.out.flush()

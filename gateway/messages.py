"""Gateway records as protobuf messages of the WorkflowService contract (the one place they
are converted; the snapshot itself is built by `auditflow.convert.snapshot`)."""

from __future__ import annotations

import functools
from datetime import datetime

from auditflow import convert
from auditflow.v1 import workflow_pb2 as pb
from auditflow.v1 import workflow_service_pb2 as wpb
from gateway.store import EventRecord, RevisionRecord, WorkflowRecord

# The answers that can weigh up to a mebibyte (a whole workflow with its result, a revision's
# plan, a page of findings): both transports encode them on a worker thread, never on the
# event loop.
LARGE_ANSWERS = frozenset({"GetWorkflow", "GetRevision", "ListFindings"})
# The answers the application layer returns already encoded, as bytes in the encoding its
# caller asks for (`encoding`: "wire" for gRPC, "json" for REST): a page of workflows, built
# in a page worker process (`gateway.pageworkers`); and the streams some of whose messages
# come encoded that way (a collection watch's initial list: "json" for SSE and NDJSON).
PREBUILT_ANSWERS = frozenset({"ListWorkflows"})
PREBUILT_STREAMS = frozenset({"WatchWorkflows"})


def snapshot(record: WorkflowRecord, unavailable_since: datetime | None = None) -> pb.StatusSnapshot:
    """The workflow's current status; `unavailable_since` while its approved work waits for an
    unavailable processor (then the message says so)."""
    snap = convert.snapshot(record)
    if unavailable_since is not None and waiting(record):  # (set on the message: cheaper than a copy)
        snap.last_message = waiting_message(unavailable_since)
        snap.processor_unavailable_since.FromDatetime(unavailable_since)
    return snap


@functools.lru_cache(maxsize=8)  # (one `since` per outage: every waiting answer shares its text)
def waiting_message(since: datetime) -> str:
    return f"approved; queued until a processor is back (unavailable since {since:%Y-%m-%d %H:%M:%S} UTC)"


def workflow(record: WorkflowRecord, unavailable_since: datetime | None = None) -> pb.Workflow:
    """The whole workflow, as GetWorkflow and the decisions answer it."""
    message = _without_plan(record, unavailable_since)
    message.plan.extend(convert.plan_from_json(record.plan_json))
    return message


def summary(record: WorkflowRecord, unavailable_since: datetime | None = None) -> pb.Workflow:
    """A workflow as a list or a collection watch shows it: each step's procedure and data
    sources, but neither the steps' parameters nor the result (GetWorkflow has them). A page
    of 500 summaries weighs a few hundred kilobytes where 500 whole plans could weigh 32 MiB."""
    message = _without_plan(record, unavailable_since, result=False)
    message.plan.extend(convert.plan_outline(record.plan_json))
    return message


def _without_plan(record: WorkflowRecord, unavailable_since: datetime | None, *, result: bool = True) -> pb.Workflow:
    status = convert.status_fields(record, result=result)
    if unavailable_since is not None and waiting(record):
        status["last_message"] = waiting_message(unavailable_since)
    return pb.Workflow(
        workflow_id=record.workflow_id,
        title=record.title,
        created_by=record.created_by,
        decided_by=record.decided_by or "",
        decision_comment=record.decision_comment or "",
        created_at=convert.timestamp(record.created_at),
        orchestrator=record.orchestrator,
        etag=record.etag,
        required_approvals=record.required_approvals,
        approvals=[
            pb.Approval(
                approver=a.approver,
                time=convert.timestamp(a.time),
                comment=a.comment,
                etag=a.etag,
                revision=record.revision,
            )  # (earlier revisions' approvals are dismissed)
            for a in record.approvals
        ],
        revision=record.revision,
        changes_requested=change_request(record),
        **status,
    )


def revision(record: RevisionRecord) -> wpb.Revision:
    return wpb.Revision(
        revision=record.revision,
        title=record.title,
        plan=convert.plan_from_json(record.plan_json),
        max_cycles=record.max_cycles,
        orchestrator=record.orchestrator,
        etag=record.etag,
        created_by=record.created_by,
        created_at=convert.timestamp(record.created_at),
        reason=record.reason,
    )


def change_request(record: WorkflowRecord) -> pb.ChangeRequest | None:
    asked = record.changes_requested
    if asked is None or record.status != pb.WORKFLOW_STATUS_CHANGES_REQUESTED:
        return None
    return pb.ChangeRequest(
        requested_by=asked.requested_by,
        time=convert.timestamp(asked.time),
        reason=asked.reason,
        revision=asked.revision,
    )


def event(record: EventRecord) -> pb.WorkflowEvent:
    return pb.WorkflowEvent(
        workflow_id=record.workflow_id,
        sequence=record.sequence,
        type=record.type,  # type: ignore[arg-type]
        status=record.status,  # type: ignore[arg-type]
        message=record.message,
        actor=record.actor,
        time=convert.timestamp(record.time),
        actor_auth=record.actor_auth or "",
        etag=record.etag or "",
        hash=record.hash or "",
        signature=record.signature or "",
        signing_key_id=record.signing_key_id or "",
    )


def event_message(record: WorkflowRecord, own: EventRecord) -> wpb.WatchStatusResponse:
    """What a watcher gets for one of the gateway's own events."""
    return wpb.WatchStatusResponse(event=event(own), snapshot=event_snapshot(record, own))


def event_snapshot(record: WorkflowRecord, event: EventRecord) -> pb.StatusSnapshot:
    """The workflow's snapshot as of one of the gateway's own events (before dispatch: no
    cycle, no progress yet; the error of a refused dispatch)."""
    return convert.snapshot(OwnEventView(record, event))


def waiting(record: WorkflowRecord) -> bool:
    """Approved, and not yet accepted by a processor."""
    return record.status == pb.WORKFLOW_STATUS_APPROVED and not record.dispatched


class OwnEventView:
    """The snapshot as of a gateway event: its status, message, time and sequence."""

    def __init__(self, record: WorkflowRecord, event: EventRecord) -> None:
        failed = event.status == pb.WORKFLOW_STATUS_FAILED
        self.workflow_id = record.workflow_id
        self.status = event.status
        self.cycle = 0
        self.max_cycles = record.max_cycles
        self.progress_done = 0
        self.progress_total = record.progress_total
        self.last_message = event.message
        self.error_reason = record.error_reason if failed else None
        self.error_message = record.error_message if failed else None
        self.result = None
        self.updated_at = event.time
        self.last_sequence = event.sequence

"""The gateway's transactions: create, approve, reject, cancel.

Each function here runs inside one write transaction on the database writer thread (see
`auditflow.db`): it checks first and raises domain errors before writing anything, then
changes the status with a compare-and-set, appends the event (linked into the workflow's
trail, `auditflow.trail`) and, where the processor must hear of it, an outbox row, all in the
same commit.

Approvals. A plan needs `required_approvals` distinct approvers, none of them its creator
(unless self-approval is allowed). Each approval is an event of its own (APPROVAL_RECORDED,
and APPROVED for the one that completes the number, which dispatches the run in the same
transaction); the same approver again is not a second vote; a reject by any approver ends it.
A decision may carry the etag of the plan the approver saw: another plan's is refused
(ABORTED, nothing stored). The common case, one approver, is one compare-and-set
(`_APPROVE_ALONE`); every other decision locks the row and decides in Python. Both apply the
etag and separation-of-duties rules of `gateway.rules`, written once for SQL and Python.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Connection, and_, bindparam, insert, update

from auditflow import convert, statuses, trail
from auditflow.errors import AlreadyDecided, EtagMismatch, NotFound, PermissionDenied, WrongState
from auditflow.prepared import Prepared
from auditflow.principal import ADMIN, Principal
from auditflow.v1 import workflow_pb2 as pb
from gateway import outbox, rules, store
from gateway.store import (
    ApprovalRecord,
    ChangeRequest,
    EventRecord,
    NewEvent,
    OutboxRow,
    RevisionRecord,
    WorkflowRecord,
    workflows,
)

APPROVE = "APPROVE"
REJECT = "REJECT"


@dataclass(frozen=True)
class NewWorkflow:
    title: str
    plan_json: str
    steps: int
    orchestrator: str
    max_cycles: int
    created_by: Principal
    request_id: str
    required_approvals: int = 1


@dataclass(frozen=True)
class Decision:
    """An approver's decision, as asked: `etag` is the plan they saw ("" for the stored one)."""

    workflow_id: str
    decision: str  # APPROVE or REJECT
    actor: Principal
    comment: str = ""
    request_id: str = ""
    etag: str = ""
    # The approval's trace context (tracing on), stored with its outbox row for the relay.
    traceparent: str = ""


@dataclass(frozen=True)
class Outcome:
    """What a transaction did: the workflow after it, the event it appended, and the message
    for the processor it committed (for the relay, which alone reads it)."""

    record: WorkflowRecord
    changed: bool
    event: EventRecord | None = None
    outbox: OutboxRow | None = None


def new_workflow_id() -> str:
    return "wf_" + secrets.token_hex(16)


def _require(conn: Connection, workflow_id: str, *, lock: bool = False) -> WorkflowRecord:
    record = store.get(conn, workflow_id, lock=lock)
    if record is None:
        raise NotFound(f"no workflow {workflow_id}", metadata={"workflow_id": workflow_id})
    return record


def create(conn: Connection, new: NewWorkflow) -> Outcome:
    creator = new.created_by
    if new.request_id:
        existing = store.find_by_request(conn, creator.name, new.request_id)
        if existing is not None:
            return Outcome(existing, changed=False)
    now = convert.utcnow()
    workflow_id = new_workflow_id()
    etag = trail.etag(new.title, new.plan_json, new.max_cycles, new.orchestrator)
    conn.execute(
        insert(workflows).values(
            workflow_id=workflow_id,
            title=new.title,
            plan_json=new.plan_json,
            orchestrator=new.orchestrator,
            created_by=creator.name,
            created_by_key=creator.key,
            created_by_auth=creator.via,
            create_request_id=new.request_id or None,
            status=pb.WORKFLOW_STATUS_AWAITING_APPROVAL,
            cancel_requested=False,
            dispatched=False,
            max_cycles=new.max_cycles,
            cycle=0,
            progress_done=0,
            progress_total=new.steps,
            last_message="awaiting approval",
            last_sequence=1,
            created_at=now,
            updated_at=now,
            etag=etag,
            required_approvals=new.required_approvals,
            approvals_count=0,
            approvals_json="[]",
            revision=1,
        )
    )
    store.add_revision(
        conn,
        RevisionRecord(
            workflow_id,
            1,
            new.title,
            new.plan_json,
            new.max_cycles,
            new.orchestrator,
            etag,
            creator.name,
            now,
            "",
            None,
        ),
    )
    message = (
        f"submitted by {creator.name}"
        + (f"; needs {new.required_approvals} approvers" if new.required_approvals > 1 else "")
        + data_note(new.plan_json)
    )
    event = store.append_event(
        conn,
        NewEvent(
            workflow_id,
            1,
            pb.EVENT_TYPE_CREATED,
            pb.WORKFLOW_STATUS_AWAITING_APPROVAL,
            message,
            creator.name,
            now,
            trail.GENESIS,
            creator.via,
            etag,
        ),
    )
    return Outcome(_require(conn, workflow_id), changed=True, event=event)


# --- decisions -----------------------------------------------------------------------------

# The approval of a plan that needs one approver, prepared once: it runs on every Approve.
# RETURNING also brings the hash of the event before, which the new event links to.
_APPROVE_ALONE = Prepared(
    update(workflows)
    .where(
        and_(
            workflows.c.workflow_id == bindparam("b_workflow_id"),
            workflows.c.status == pb.WORKFLOW_STATUS_AWAITING_APPROVAL,
            workflows.c.required_approvals == 1,
            rules.separated(workflows.c.created_by_key, bindparam("b_forbidden_key")),
            rules.etag_holds(bindparam("b_etag"), workflows.c.etag),
        )
    )
    .values(
        status=pb.WORKFLOW_STATUS_APPROVED,
        decision=APPROVE,
        decided_by=bindparam("b_actor"),
        decided_by_auth=bindparam("b_actor_auth"),
        decision_comment=bindparam("b_comment"),
        decision_request_id=bindparam("b_request_id"),
        decided_at=bindparam("b_now"),
        updated_at=bindparam("b_now"),
        last_message=bindparam("b_message"),
        last_sequence=workflows.c.last_sequence + 1,
        approvals_count=1,
        approvals_json=bindparam("b_approvals"),
    )
    .returning(*workflows.c, store.previous_hash_column()),
    name="ApprovedRow",
)


def decide(
    conn: Connection,
    decision: Decision,
    *,
    self_approval: bool = False,
    signer: trail.Signer | None = None,
) -> Outcome:
    """Approve or reject. Repeating a decision (the same approver, or the same request_id)
    returns the stored outcome unchanged. Unless `self_approval`, the creator of a plan may
    reject (withdraw) it but not approve it, however either name is spelled or cased (names
    are compared by `Principal.key`)."""
    now = convert.utcnow()
    actor = decision.actor
    if decision.decision == APPROVE:
        approval = _approval(decision, now)
        params = {
            "b_workflow_id": decision.workflow_id,
            "b_actor": actor.name,
            "b_actor_auth": actor.via,
            "b_comment": decision.comment,
            "b_request_id": decision.request_id or None,
            "b_now": now,
            "b_message": _approved_message([approval], 1, decision.comment),
            "b_forbidden_key": rules.forbidden_key(actor, self_approval=self_approval),
            "b_etag": decision.etag,
            "b_approvals": json.dumps([approval.to_json()]),
        }
        row = _APPROVE_ALONE.run(conn, params)
        if row is not None:
            return _approved(conn, WorkflowRecord.from_row(row), decision, now, str(row.previous_hash or ""))
    return _decide_locked(conn, decision, now, self_approval=self_approval, signer=signer)


def _decide_locked(
    conn: Connection, decision: Decision, now: datetime, *, self_approval: bool, signer: trail.Signer | None
) -> Outcome:
    """Every decision but a lone approval: with the row locked (FOR UPDATE on PostgreSQL; the
    SQLite writer is alone), so that concurrent approvers are counted one after the other."""
    workflow_id, actor = decision.workflow_id, decision.actor
    row = _require(conn, workflow_id, lock=True)
    approve = decision.decision == APPROVE
    if not statuses.awaits_decision(row.status):
        if _same_decision(row, decision):
            return Outcome(row, changed=False)
        raise _refuse(row, workflow_id)
    if approve and row.status == pb.WORKFLOW_STATUS_CHANGES_REQUESTED:
        raise _waits_for_revision(row)
    if approve and _already_approved(row, decision):
        return Outcome(row, changed=False)  # the same approver again: not a second vote
    if approve and not rules.separated(row.created_by_key, rules.forbidden_key(actor, self_approval=self_approval)):
        raise PermissionDenied(
            f"separation of duties: {actor.name} submitted workflow {workflow_id} and may not approve it",
            metadata={"workflow_id": workflow_id, "rule": "SEPARATION_OF_DUTIES"},
            reason="SEPARATION_OF_DUTIES",
        )
    if not rules.etag_holds(decision.etag, row.etag):
        raise EtagMismatch(
            f"workflow {workflow_id}: etag {decision.etag!r} is not the plan's; read the workflow again, then decide",
            metadata={"workflow_id": workflow_id},
        )
    previous = store.event_hash(conn, workflow_id, row.last_sequence)
    if not approve:
        return _rejected(conn, row, decision, now, previous, signer)
    approvals = [*row.approvals, _approval(decision, now)]
    if len(approvals) < row.required_approvals:
        return _partly_approved(conn, row, decision, approvals, now, previous)
    values = {
        "status": pb.WORKFLOW_STATUS_APPROVED,
        "decision": APPROVE,
        "decided_by": actor.name,
        "decided_by_auth": actor.via,
        "decision_comment": decision.comment,
        "decision_request_id": decision.request_id or None,
        "decided_at": now,
        "last_message": _approved_message(approvals, row.required_approvals, decision.comment),
    }
    record = _update(conn, row, now, approvals=approvals, **values)
    return _approved(conn, record, decision, now, previous)


def _approved(conn: Connection, record: WorkflowRecord, decision: Decision, now: datetime, previous: str) -> Outcome:
    """The approval that completes the plan's number: its event, and the Enqueue for the relay."""
    actor = decision.actor
    event = _event(
        conn,
        record.workflow_id,
        record,
        pb.EVENT_TYPE_APPROVED,
        pb.WORKFLOW_STATUS_APPROVED,
        record.last_message,
        actor,
        now,
        previous,
        etag=record.etag,
    )
    payload = outbox.enqueue_payload(record, actor.name, event.hash or "", now, decision.traceparent)
    row = store.add_outbox(conn, record.workflow_id, store.ENQUEUE, payload, now)
    return Outcome(record, True, event, row)


def _partly_approved(
    conn: Connection,
    row: WorkflowRecord,
    decision: Decision,
    approvals: list[ApprovalRecord],
    now: datetime,
    previous: str,
) -> Outcome:
    message = _approved_message(approvals, row.required_approvals, decision.comment)
    record = _update(conn, row, now, approvals=approvals, last_message=message)
    actor = decision.actor
    event = _event(
        conn,
        row.workflow_id,
        record,
        pb.EVENT_TYPE_APPROVAL_RECORDED,
        pb.WORKFLOW_STATUS_AWAITING_APPROVAL,
        message,
        actor,
        now,
        previous,
        etag=row.etag,
    )
    return Outcome(record, True, event)


def _rejected(
    conn: Connection, row: WorkflowRecord, decision: Decision, now: datetime, previous: str, signer: trail.Signer | None
) -> Outcome:
    actor = decision.actor
    message = f"rejected by {actor.name}" + (f": {decision.comment}" if decision.comment else "")
    record = _update(
        conn,
        row,
        now,
        status=pb.WORKFLOW_STATUS_REJECTED,
        decision=REJECT,
        decided_by=actor.name,
        decided_by_auth=actor.via,
        decision_comment=decision.comment,
        decision_request_id=decision.request_id or None,
        decided_at=now,
        last_message=message,
    )
    event = _event(
        conn,
        row.workflow_id,
        record,
        pb.EVENT_TYPE_REJECTED,
        pb.WORKFLOW_STATUS_REJECTED,
        message,
        actor,
        now,
        previous,
        etag=row.etag,
        signer=signer,
    )
    return Outcome(record, True, event)


def _update(
    conn: Connection,
    row: WorkflowRecord,
    now: datetime,
    *,
    approvals: list[ApprovalRecord] | None = None,
    **values: object,
) -> WorkflowRecord:
    """Write `values` and the next sequence on the locked row; the row as written."""
    if approvals is not None:
        values["approvals_count"] = len(approvals)
        values["approvals_json"] = json.dumps([a.to_json() for a in approvals])
    written = conn.execute(
        update(workflows)
        .where(workflows.c.workflow_id == row.workflow_id)
        .values(last_sequence=row.last_sequence + 1, updated_at=now, **values)
        .returning(*workflows.c)
    ).one()
    return WorkflowRecord.from_row(written)


def _approval(decision: Decision, now: datetime) -> ApprovalRecord:
    actor = decision.actor
    return ApprovalRecord(actor.name, actor.key, actor.via, now, decision.comment, decision.etag, decision.request_id)


def _approved_message(approvals: list[ApprovalRecord], required: int, comment: str) -> str:
    last = approvals[-1].approver
    text = f"approved by {last}"
    if required > 1:
        missing = required - len(approvals)
        names = ", ".join(a.approver for a in approvals)
        text += f" ({len(approvals)} of {required}: {names}" + (f"; {missing} more needed)" if missing else ")")
    return text + (f": {comment}" if comment else "")


def _already_approved(row: WorkflowRecord, decision: Decision) -> bool:
    return any(
        a.key == decision.actor.key or (decision.request_id and a.request_id == decision.request_id)
        for a in row.approvals
    )


def _same_decision(row: WorkflowRecord, decision: Decision) -> bool:
    """The same decision again, by the same person or with the same request id."""
    if row.decision != decision.decision:
        return False
    if decision.decision == APPROVE:
        return _already_approved(row, decision)
    return bool(
        decision.actor.is_(row.decided_by or "")
        or (decision.request_id and row.decision_request_id == decision.request_id)
    )


def _refuse(row: WorkflowRecord, workflow_id: str) -> Exception:
    meta = {"workflow_id": workflow_id, "status": statuses.name(row.status)}
    if row.decision:
        verb = "approved" if row.decision == APPROVE else "rejected"
        return AlreadyDecided(f"workflow {workflow_id} was already {verb} by {row.decided_by}", metadata=meta)
    return WrongState(f"workflow {workflow_id} is {statuses.name(row.status)}, not AWAITING_APPROVAL", metadata=meta)


def _waits_for_revision(row: WorkflowRecord) -> WrongState:
    asked = row.changes_requested
    who = f"{asked.requested_by} asked for changes: {asked.reason}" if asked else "changes were requested"
    return WrongState(
        f"workflow {row.workflow_id}: {who}; it waits for its submitter's revision",
        metadata={"workflow_id": row.workflow_id, "status": statuses.name(row.status)},
    )


# --- review: revisions and requests for changes ------------------------------------------------


@dataclass(frozen=True)
class Revision:
    """A submitter's new revision of a plan awaiting a decision. `plan_json` is the new plan,
    its data fingerprinted anew (the current steps when only the data is refreshed)."""

    workflow_id: str
    etag: str  # of the revision being revised
    actor: Principal
    title: str
    plan_json: str
    steps: int
    max_cycles: int
    reason: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class Revised:
    outcome: Outcome
    dismissed: tuple[str, ...] = ()


def revise(conn: Connection, revision: Revision) -> Revised:
    """A new revision: new etag, the approvals of the earlier one dismissed (and named in the
    REVISED event), an open request for changes answered. Only the submitter may revise, and
    only while the plan awaits a decision."""
    row = _require(conn, revision.workflow_id, lock=True)
    actor = revision.actor
    if revision.request_id and store.find_revision_request(conn, row.workflow_id, revision.request_id):
        return Revised(Outcome(row, changed=False))  # a retried revision
    check_revisable(row, actor)
    if revision.etag != row.etag:
        raise EtagMismatch(
            f"workflow {row.workflow_id}: etag {revision.etag!r} is not revision {row.revision}'s; read it again",
            metadata={"workflow_id": row.workflow_id},
        )
    now = convert.utcnow()
    number = row.revision + 1
    etag = trail.etag(revision.title, revision.plan_json, revision.max_cycles, row.orchestrator)
    dismissed = tuple(a.approver for a in row.approvals)
    message = _revised_message(number, actor.name, revision.reason, dismissed) + data_note(revision.plan_json)
    previous = store.event_hash(conn, row.workflow_id, row.last_sequence)
    store.add_revision(
        conn,
        RevisionRecord(
            row.workflow_id,
            number,
            revision.title,
            revision.plan_json,
            revision.max_cycles,
            row.orchestrator,
            etag,
            actor.name,
            now,
            revision.reason,
            revision.request_id or None,
        ),
    )
    record = _update(
        conn,
        row,
        now,
        approvals=[],
        revision=number,
        etag=etag,
        title=revision.title,
        plan_json=revision.plan_json,
        max_cycles=revision.max_cycles,
        progress_total=revision.steps,
        status=pb.WORKFLOW_STATUS_AWAITING_APPROVAL,
        changes_requested_json=None,
        last_message=message,
    )
    event = _event(
        conn,
        row.workflow_id,
        record,
        pb.EVENT_TYPE_REVISED,
        pb.WORKFLOW_STATUS_AWAITING_APPROVAL,
        message,
        actor,
        now,
        previous,
        etag=etag,
    )
    return Revised(Outcome(record, True, event), dismissed)


def data_note(plan_json: str) -> str:
    """The data files a plan reads and their digests, for the trail's readers (the etag binds
    the whole fingerprint; this says which bytes in words)."""
    files = {f["path"]: f["sha256"] for step in json.loads(plan_json) for f in step.get("sources", ())}
    if not files:
        return ""
    return "; data: " + ", ".join(f"{path} sha256 {digest}" for path, digest in files.items())


def check_revisable(row: WorkflowRecord, actor: Principal) -> None:
    """Only the submitter revises a plan, and only while it awaits a decision."""
    if row.created_by_key != actor.key:
        raise PermissionDenied(
            f"only the submitter of workflow {row.workflow_id} ({row.created_by}) may revise it",
            metadata={"workflow_id": row.workflow_id, "rule": "OWN_WORKFLOWS_ONLY"},
            reason="NOT_OWNER",
        )
    if not statuses.awaits_decision(row.status):
        raise WrongState(
            f"workflow {row.workflow_id} is {statuses.name(row.status)}: only a plan awaiting a decision "
            "can be revised",
            metadata={"workflow_id": row.workflow_id, "status": statuses.name(row.status)},
        )


def _revised_message(number: int, actor: str, reason: str, dismissed: tuple[str, ...]) -> str:
    text = f"revision {number} by {actor}" + (f": {reason}" if reason else "")
    if dismissed:
        text += f"; dismissed the approval{'s' if len(dismissed) > 1 else ''} of {', '.join(dismissed)}"
    return text


def request_changes(conn: Connection, workflow_id: str, actor: Principal, etag: str, reason: str) -> Outcome:
    """An approver asks for changes: the plan waits for a revision (approvals so far stay, and
    are dismissed by that revision). The submitter may not ask it of their own plan."""
    row = _require(conn, workflow_id, lock=True)
    asked = row.changes_requested
    if (
        row.status == pb.WORKFLOW_STATUS_CHANGES_REQUESTED
        and asked
        and asked.key == actor.key
        and asked.reason == reason
    ):
        return Outcome(row, changed=False)  # the same request again
    if row.status != pb.WORKFLOW_STATUS_AWAITING_APPROVAL:
        raise _refuse(row, workflow_id)
    if row.created_by_key == actor.key:
        raise PermissionDenied(
            f"{actor.name} submitted workflow {workflow_id}: revise it instead of asking for changes",
            metadata={"workflow_id": workflow_id, "rule": "SEPARATION_OF_DUTIES"},
            reason="SEPARATION_OF_DUTIES",
        )
    if etag != row.etag:
        raise EtagMismatch(
            f"workflow {workflow_id}: etag {etag!r} is not the plan's; read the workflow again, then decide",
            metadata={"workflow_id": workflow_id},
        )
    now = convert.utcnow()
    request = ChangeRequest(actor.name, actor.key, now, reason, row.revision)
    message = f"changes requested by {actor.name}: {reason}"
    previous = store.event_hash(conn, workflow_id, row.last_sequence)
    record = _update(
        conn,
        row,
        now,
        status=pb.WORKFLOW_STATUS_CHANGES_REQUESTED,
        changes_requested_json=json.dumps(request.to_json()),
        last_message=message,
    )
    event = _event(
        conn,
        workflow_id,
        record,
        pb.EVENT_TYPE_CHANGES_REQUESTED,
        pb.WORKFLOW_STATUS_CHANGES_REQUESTED,
        message,
        actor,
        now,
        previous,
        etag=row.etag,
    )
    return Outcome(record, True, event)


def _event(
    conn: Connection,
    workflow_id: str,
    record: WorkflowRecord,
    type_: int,
    status: int,
    message: str,
    actor: Principal,
    now: datetime,
    previous: str,
    *,
    etag: str | None = None,
    signer: trail.Signer | None = None,
) -> EventRecord:
    """Append the event of a change `actor` just made to the workflow (`record`, as updated:
    its last sequence is the event's), linked to the event before (`previous`)."""
    new = NewEvent(
        workflow_id, record.last_sequence, type_, status, message, actor.name, now, previous, actor.via, etag
    )
    return store.append_event(conn, new, signer)


# --- cancel and refused dispatch -------------------------------------------------------------


def cancel(
    conn: Connection, workflow_id: str, actor: Principal, reason: str, signer: trail.Signer | None = None
) -> Outcome:
    """Cancel at once while awaiting approval; otherwise ask the processor (via the outbox).
    A submitter cancels only what they submitted; an admin anything."""
    row = _require(conn, workflow_id, lock=True)
    if row.created_by_key != actor.key and not actor.has(ADMIN):
        raise PermissionDenied(
            f"{actor.name} may cancel only workflows they submitted ({workflow_id} was submitted by {row.created_by})",
            metadata={"workflow_id": workflow_id, "rule": "OWN_WORKFLOWS_ONLY"},
            reason="NOT_OWNER",
        )
    if statuses.is_terminal(row.status):
        raise WrongState(
            f"workflow {workflow_id} already ended: {statuses.name(row.status)}",
            metadata={"workflow_id": workflow_id, "status": statuses.name(row.status)},
        )
    now = convert.utcnow()
    message = f"cancelled by {actor.name}" + (f": {reason}" if reason else "")
    if statuses.awaits_decision(row.status):
        previous = store.event_hash(conn, workflow_id, row.last_sequence)
        record = _update(conn, row, now, status=pb.WORKFLOW_STATUS_CANCELLED, last_message=message)
        event = _event(
            conn,
            workflow_id,
            record,
            pb.EVENT_TYPE_CANCELLED,
            pb.WORKFLOW_STATUS_CANCELLED,
            message,
            actor,
            now,
            previous,
            signer=signer,
        )
        return Outcome(record, True, event)
    if row.cancel_requested:
        return Outcome(row, changed=False)
    conn.execute(update(workflows).where(workflows.c.workflow_id == workflow_id).values(cancel_requested=True))
    payload = outbox.cancel_payload(workflow_id, actor, reason)
    message_row = store.add_outbox(conn, workflow_id, store.CANCEL, payload, now)
    return Outcome(replace(row, cancel_requested=True), True, None, message_row)


def fail_dispatch(
    conn: Connection, workflow_id: str, reason: str, message: str, signer: trail.Signer | None = None
) -> EventRecord | None:
    """The processor refused the workflow for good: end it here, with the reason."""
    row = _require(conn, workflow_id, lock=True)
    if row.dispatched or statuses.is_terminal(row.status):
        return None
    now = convert.utcnow()
    previous = store.event_hash(conn, workflow_id, row.last_sequence)
    record = _update(
        conn,
        row,
        now,
        status=pb.WORKFLOW_STATUS_FAILED,
        error_reason=reason,
        error_message=message,
        last_message=message,
    )
    return store.append_event(
        conn,
        NewEvent(
            workflow_id,
            record.last_sequence,
            pb.EVENT_TYPE_FAILED,
            pb.WORKFLOW_STATUS_FAILED,
            message,
            "gateway",
            now,
            previous,
        ),
        signer,
    )

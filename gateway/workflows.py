"""The gateway's transactions: create, approve, reject, cancel.

Each function here runs inside one write transaction on the database writer thread (see
`auditflow.db`): it checks first and raises domain errors before writing anything, then
changes the status with a compare-and-set, appends the event and, where the processor must
hear of it, an outbox row, all in the same commit.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, insert, update

from auditflow import convert, statuses
from auditflow.errors import AlreadyDecided, NotFound, PermissionDenied, WrongState
from auditflow.prepared import Prepared
from auditflow.principal import ADMIN, Principal
from auditflow.v1 import workflow_pb2 as pb
from gateway import outbox, store
from gateway.store import EventRecord, OutboxRow, WorkflowRecord, workflows

S = pb.WorkflowStatus
E = pb.EventType
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


def _require(conn: Connection, workflow_id: str) -> WorkflowRecord:
    record = store.get(conn, workflow_id)
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
            status=S.WORKFLOW_STATUS_AWAITING_APPROVAL,
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
        )
    )
    event = store.append_event(
        conn,
        workflow_id,
        1,
        E.EVENT_TYPE_CREATED,
        S.WORKFLOW_STATUS_AWAITING_APPROVAL,
        f"submitted by {creator.name}",
        creator.name,
        now,
        creator.via,
    )
    return Outcome(_require(conn, workflow_id), changed=True, event=event)


def _same_decision(row: WorkflowRecord, decision: str, actor: Principal, request_id: str) -> bool:
    """The same decision again, by the same person or with the same request id."""
    if row.decision != decision:
        return False
    return bool(actor.is_(row.decided_by or "") or (request_id and row.decision_request_id == request_id))


def _refuse(row: WorkflowRecord, workflow_id: str) -> Exception:
    meta = {"workflow_id": workflow_id, "status": statuses.name(row.status)}
    if row.decision:
        verb = "approved" if row.decision == APPROVE else "rejected"
        return AlreadyDecided(f"workflow {workflow_id} was already {verb} by {row.decided_by}", metadata=meta)
    return WrongState(f"workflow {workflow_id} is {statuses.name(row.status)}, not AWAITING_APPROVAL", metadata=meta)


# The compare-and-set of a decision, prepared once: it runs on every Approve.
_DECIDE = Prepared(
    update(workflows)
    .where(
        and_(
            workflows.c.workflow_id == bindparam("b_workflow_id"),
            workflows.c.status == S.WORKFLOW_STATUS_AWAITING_APPROVAL,
            # Separation of duties: "" when the decision is not restricted.
            workflows.c.created_by_key != bindparam("b_forbidden_key"),
        )
    )
    .values(
        status=bindparam("b_status"),
        decision=bindparam("b_decision"),
        decided_by=bindparam("b_actor"),
        decided_by_auth=bindparam("b_actor_auth"),
        decision_comment=bindparam("b_comment"),
        decision_request_id=bindparam("b_request_id"),
        decided_at=bindparam("b_now"),
        updated_at=bindparam("b_now"),
        last_message=bindparam("b_message"),
        last_sequence=workflows.c.last_sequence + 1,
    )
    .returning(*workflows.c),
    name="WorkflowRow",
)


def decide(
    conn: Connection,
    workflow_id: str,
    decision: str,
    actor: Principal,
    comment: str,
    request_id: str,
    *,
    self_approval: bool = False,
) -> Outcome:
    """Approve or reject: a compare-and-set from AWAITING_APPROVAL. Repeating the same decision
    (same approver, or same request_id) returns the stored outcome unchanged. Unless
    `self_approval`, the creator of a plan may reject (withdraw) it but not approve it, however
    either name is spelled or cased (names are compared by `Principal.key`)."""
    now = convert.utcnow()
    approve = decision == APPROVE
    status = S.WORKFLOW_STATUS_APPROVED if approve else S.WORKFLOW_STATUS_REJECTED
    message = f"{'approved' if approve else 'rejected'} by {actor.name}" + (f": {comment}" if comment else "")
    params = {
        "b_workflow_id": workflow_id,
        "b_status": status,
        "b_decision": decision,
        "b_actor": actor.name,
        "b_actor_auth": actor.via,
        "b_comment": comment,
        "b_request_id": request_id or None,
        "b_now": now,
        "b_message": message,
        "b_forbidden_key": actor.key if approve and not self_approval else "",
    }
    decided = _DECIDE.run(conn, params)
    if decided is None:  # not awaiting approval (or unknown): nothing was written
        current = _require(conn, workflow_id)
        if _same_decision(current, decision, actor, request_id):
            return Outcome(current, changed=False)
        if current.status == S.WORKFLOW_STATUS_AWAITING_APPROVAL and current.created_by_key == actor.key:
            raise PermissionDenied(
                f"separation of duties: {actor.name} submitted workflow {workflow_id} and may not approve it",
                metadata={"workflow_id": workflow_id, "rule": "SEPARATION_OF_DUTIES"},
                reason="SEPARATION_OF_DUTIES",
            )
        raise _refuse(current, workflow_id)
    record = WorkflowRecord.from_row(decided)
    event_type = E.EVENT_TYPE_APPROVED if approve else E.EVENT_TYPE_REJECTED
    event = store.append_event(
        conn, workflow_id, record.last_sequence, event_type, status, message, actor.name, now, actor.via
    )
    if not approve:
        return Outcome(record, True, event)
    payload = outbox.enqueue_payload(record, actor.name)
    row = store.add_outbox(conn, workflow_id, store.ENQUEUE, payload, now)
    return Outcome(record, True, event, row)


def cancel(conn: Connection, workflow_id: str, actor: Principal, reason: str) -> Outcome:
    """Cancel at once while awaiting approval; otherwise ask the processor (via the outbox).
    A submitter cancels only what they submitted; an admin anything."""
    row = _require(conn, workflow_id)
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
    if row.status == S.WORKFLOW_STATUS_AWAITING_APPROVAL:
        sequence = row.last_sequence + 1
        conn.execute(
            update(workflows)
            .where(workflows.c.workflow_id == workflow_id)
            .values(status=S.WORKFLOW_STATUS_CANCELLED, updated_at=now, last_message=message, last_sequence=sequence)
        )
        event = store.append_event(
            conn, workflow_id, sequence, E.EVENT_TYPE_CANCELLED, S.WORKFLOW_STATUS_CANCELLED, message, actor.name, now,
            actor.via,
        )  # fmt: skip
        return Outcome(_require(conn, workflow_id), True, event)
    if row.cancel_requested:
        return Outcome(row, changed=False)
    conn.execute(update(workflows).where(workflows.c.workflow_id == workflow_id).values(cancel_requested=True))
    payload = outbox.cancel_payload(workflow_id, actor, reason)
    message_row = store.add_outbox(conn, workflow_id, store.CANCEL, payload, now)
    return Outcome(_require(conn, workflow_id), True, None, message_row)


def fail_dispatch(conn: Connection, workflow_id: str, reason: str, message: str) -> EventRecord | None:
    """The processor refused the workflow for good: end it here, with the reason."""
    row = _require(conn, workflow_id)
    if row.dispatched or statuses.is_terminal(row.status):
        return None
    now = convert.utcnow()
    sequence = row.last_sequence + 1
    conn.execute(
        update(workflows)
        .where(workflows.c.workflow_id == workflow_id)
        .values(
            status=S.WORKFLOW_STATUS_FAILED,
            error_reason=reason,
            error_message=message,
            last_message=message,
            updated_at=now,
            last_sequence=sequence,
        )
    )
    return store.append_event(
        conn, workflow_id, sequence, E.EVENT_TYPE_FAILED, S.WORKFLOW_STATUS_FAILED, message, "gateway", now
    )

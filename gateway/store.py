"""The gateway's tables and the queries on them (SQLAlchemy Core, blocking: they run on the
database threads of `auditflow.db.Database`).

The gateway owns workflows (plan, creator, decision) and their events up to dispatch, plus the
outbox of messages for the processor. After dispatch, the processor owns the run and its
events; the gateway keeps a mirror of the run's status on the workflow row for Get and List.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    delete,
    insert,
    or_,
    select,
    update,
)

from auditflow import convert, statuses
from auditflow.prepared import Prepared
from auditflow.v1 import processor_service_pb2 as ppb
from auditflow.v1 import workflow_pb2 as pb

metadata = MetaData()

workflows = Table(
    "workflows",
    metadata,
    Column("workflow_id", String(40), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("plan_json", Text, nullable=False),
    Column("orchestrator", String(100), nullable=False),
    Column("created_by", String(128), nullable=False),
    # The creator's name as compared (auditflow.principal.name_key): separation of duties.
    Column("created_by_key", String(128), nullable=False),
    Column("created_by_auth", String(300)),
    Column("create_request_id", String(128)),
    Column("status", Integer, nullable=False),
    Column("decision", String(10)),
    Column("decided_by", String(128)),
    Column("decided_by_auth", String(300)),
    Column("decision_comment", Text),
    Column("decision_request_id", String(128)),
    Column("decided_at", DateTime(timezone=True)),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("dispatched", Boolean, nullable=False, default=False),
    Column("max_cycles", Integer, nullable=False),
    Column("cycle", Integer, nullable=False, default=0),
    Column("progress_done", Integer, nullable=False, default=0),
    Column("progress_total", Integer, nullable=False),
    Column("last_message", Text, nullable=False, default=""),
    Column("error_reason", String(100)),
    Column("error_message", Text),
    Column("result_json", Text),
    Column("last_sequence", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("created_by", "create_request_id", name="uq_workflows_create_request"),
    Index("ix_workflows_created", "created_at", "workflow_id"),
    Index("ix_workflows_status", "status", "created_at"),
)

workflow_events = Table(
    "workflow_events",
    metadata,
    Column("workflow_id", String(40), primary_key=True),
    Column("sequence", BigInteger, primary_key=True),
    Column("type", Integer, nullable=False),
    Column("status", Integer, nullable=False),
    Column("message", Text, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    # How the actor authenticated ("token:<id>", "jwt:<issuer>" …); NULL for the gateway's own.
    Column("actor_auth", String(300)),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("workflow_id", String(40), nullable=False, index=True),
    Column("kind", String(20), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

ENQUEUE = "enqueue"
CANCEL = "cancel"


# Statements run on every approval, dispatch, mirrored event or watch are built once, with
# bound parameters (building one and its cache key costs more than running the cached
# compiled form). Names start with "b_" so that they never collide with the column names an
# UPDATE takes its SET values from.
_WORKFLOW_ID = workflows.c.workflow_id == bindparam("b_workflow_id")
_GET = select(workflows).where(_WORKFLOW_ID)
_EVENTS_AFTER = (
    select(workflow_events)
    .where(
        workflow_events.c.workflow_id == bindparam("b_workflow_id"),
        workflow_events.c.sequence > bindparam("b_after"),
    )
    .order_by(workflow_events.c.sequence)
)
# SET takes the columns named in each execution's parameters; never backwards.
_MIRROR = update(workflows).where(
    _WORKFLOW_ID,
    or_(workflows.c.last_sequence < bindparam("b_last_sequence"), workflows.c.dispatched.is_(False)),
)
_DELETE_OUTBOX = delete(outbox).where(outbox.c.id == bindparam("b_id"))


def get(conn: Connection, workflow_id: str) -> Row[Any] | None:
    return conn.execute(_GET, {"b_workflow_id": workflow_id}).first()


def find_by_request(conn: Connection, created_by: str, request_id: str) -> Row[Any] | None:
    query = select(workflows).where(
        and_(workflows.c.created_by == created_by, workflows.c.create_request_id == request_id)
    )
    return conn.execute(query).first()


# Both run on every decision: prepared (see auditflow.prepared), not executed through Core.
_INSERT_EVENT = Prepared(insert(workflow_events).values({c.key: bindparam(c.key) for c in workflow_events.c}))
_INSERT_OUTBOX = Prepared(
    insert(outbox)
    .values(workflow_id=bindparam("workflow_id"), kind=bindparam("kind"), payload=bindparam("payload"),
            created_at=bindparam("created_at"))
    .returning(outbox.c.id)
)  # fmt: skip


def append_event(
    conn: Connection,
    workflow_id: str,
    sequence: int,
    type_: int,
    status: int,
    message: str,
    actor: str,
    time: datetime,
    actor_auth: str | None = None,
) -> dict[str, Any]:
    values = {
        "workflow_id": workflow_id,
        "sequence": sequence,
        "type": type_,
        "status": status,
        "message": message,
        "actor": actor,
        "time": time,
        "actor_auth": actor_auth,
    }
    _INSERT_EVENT.run(conn, values)
    return values


def events_after(conn: Connection, workflow_id: str, after: int) -> list[Row[Any]]:
    return list(conn.execute(_EVENTS_AFTER, {"b_workflow_id": workflow_id, "b_after": after}))


def add_outbox(conn: Connection, workflow_id: str, kind: str, payload: bytes, time: datetime) -> int:
    values = {"workflow_id": workflow_id, "kind": kind, "payload": payload, "created_at": time}
    row = _INSERT_OUTBOX.run(conn, values)
    return int(row.id)


def pending_outbox(conn: Connection, known: Collection[int] = ()) -> list[Row[Any]]:
    """Outbox rows not in `known`, oldest first. Only ids are read for all rows, so that a
    large backlog the relay already holds costs little to scan."""
    ids = [r[0] for r in conn.execute(select(outbox.c.id).order_by(outbox.c.id)) if r[0] not in known]
    rows: list[Row[Any]] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows.extend(conn.execute(select(outbox).where(outbox.c.id.in_(chunk)).order_by(outbox.c.id)))
    return rows


def clear_cancel_requested(conn: Connection, workflow_id: str) -> None:
    conn.execute(update(workflows).where(workflows.c.workflow_id == workflow_id).values(cancel_requested=False))


def delete_outbox(conn: Connection, outbox_id: int) -> None:
    conn.execute(_DELETE_OUTBOX, {"b_id": outbox_id})


def enqueue_request(conn: Connection, payload: bytes) -> ppb.EnqueueRequest | None:
    """The Enqueue an outbox row stands for: its payload completed from the workflow row."""
    request = ppb.EnqueueRequest.FromString(payload)
    row = get(conn, request.workflow_id)
    return None if row is None else complete_enqueue(request, row)


def complete_enqueue(request: ppb.EnqueueRequest, row: Row[Any]) -> ppb.EnqueueRequest:
    """The outbox keeps only what the workflow row does not (approver, base sequence);
    the rest of the Enqueue comes from the row."""
    request.title = row.title
    request.plan.extend(convert.plan_from_json(row.plan_json))
    request.orchestrator = row.orchestrator
    request.max_cycles = row.max_cycles
    return request


def to_follow(conn: Connection) -> list[tuple[str, int]]:
    """Dispatched workflows whose run has not ended, with the last sequence mirrored."""
    query = (
        select(workflows.c.workflow_id, workflows.c.last_sequence)
        .where(and_(workflows.c.dispatched.is_(True), workflows.c.status.not_in(list(statuses.TERMINAL))))
        .order_by(workflows.c.decided_at, workflows.c.workflow_id)
    )
    return [(r[0], r[1]) for r in conn.execute(query)]


def mirror(conn: Connection, workflow_id: str, snap: pb.StatusSnapshot, *, dispatched: bool = True) -> None:
    """Copy the processor's view of the run onto the workflow row (never backwards)."""
    values: dict[str, Any] = {
        "status": snap.status,
        "cycle": snap.cycle,
        "progress_done": snap.progress.done,
        "progress_total": snap.progress.total,
        "last_message": snap.last_message,
        "error_reason": snap.error.reason or None,
        "error_message": snap.error.message or None,
        "result_json": json.dumps(convert.struct_to_dict(snap.result)) if snap.HasField("result") else None,
        "last_sequence": snap.last_sequence,
        "updated_at": snap.updated_at.ToDatetime(tzinfo=UTC),
        "dispatched": dispatched,
    }
    conn.execute(_MIRROR, {"b_workflow_id": workflow_id, "b_last_sequence": snap.last_sequence, **values})


def list_page(
    conn: Connection, status_filter: Sequence[int], limit: int, after: tuple[datetime, str] | None
) -> list[Row[Any]]:
    """Newest first; keyset pagination on (created_at, workflow_id)."""
    query = select(workflows).order_by(workflows.c.created_at.desc(), workflows.c.workflow_id.desc()).limit(limit)
    if status_filter:
        query = query.where(workflows.c.status.in_(list(status_filter)))
    if after is not None:
        created_at, workflow_id = after
        query = query.where(
            or_(
                workflows.c.created_at < created_at,
                and_(workflows.c.created_at == created_at, workflows.c.workflow_id < workflow_id),
            )
        )
    return list(conn.execute(query))


# --- rows to messages ------------------------------------------------------------------


def snapshot_of(row: Row[Any]) -> pb.StatusSnapshot:
    return convert.snapshot(
        workflow_id=row.workflow_id,
        status=row.status,
        cycle=row.cycle,
        max_cycles=row.max_cycles,
        progress_done=row.progress_done,
        progress_total=row.progress_total,
        last_message=row.last_message,
        error_reason=row.error_reason,
        error_message=row.error_message,
        result=json.loads(row.result_json) if row.result_json else None,
        updated_at=row.updated_at,
        last_sequence=row.last_sequence,
    )


def workflow_of(row: Row[Any]) -> pb.Workflow:
    snap = snapshot_of(row)
    return pb.Workflow(
        workflow_id=row.workflow_id,
        title=row.title,
        plan=convert.plan_from_json(row.plan_json),
        created_by=row.created_by,
        status=row.status,
        decided_by=row.decided_by or "",
        decision_comment=row.decision_comment or "",
        cycle=row.cycle,
        max_cycles=row.max_cycles,
        progress=snap.progress,
        last_message=row.last_message,
        error=snap.error if snap.HasField("error") else None,
        result=snap.result if snap.HasField("result") else None,
        background_processing=snap.background_processing,
        is_processing=snap.is_processing,
        is_completed=snap.is_completed,
        created_at=convert.timestamp(row.created_at),
        updated_at=snap.updated_at,
        last_update=snap.last_update,
        orchestrator=row.orchestrator,
        last_sequence=row.last_sequence,
    )


def event_message(event: Row[Any] | dict[str, Any]) -> pb.WorkflowEvent:
    e = event._mapping if isinstance(event, Row) else event
    return pb.WorkflowEvent(
        workflow_id=e["workflow_id"],
        sequence=e["sequence"],
        type=e["type"],
        status=e["status"],
        message=e["message"],
        actor=e["actor"],
        time=convert.timestamp(e["time"]),
        actor_auth=e["actor_auth"] or "",
    )

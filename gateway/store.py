"""The gateway's tables, the queries on them, and their records (SQLAlchemy Core, blocking:
they run on the database threads of `auditflow.db.Database`).

The gateway owns workflows (plan, creator, decision) and their events up to dispatch, plus the
outbox of messages for the processor. After dispatch, the processor owns the run and its
events; the gateway keeps a mirror of the run's status on the workflow row for Get and List
(written by `gateway.feed`, the one follower of the processor's events).

Queries return records (`WorkflowRecord`, `EventRecord`, `OutboxRow`), never bare rows.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
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
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from auditflow import convert, statuses, trail
from auditflow.convert import as_utc
from auditflow.prepared import Prepared
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
    # What an approver approves (auditflow.trail.etag of title, plan, max_cycles, orchestrator).
    Column("etag", String(64), nullable=False, server_default=""),
    # N-of-M: distinct approvers needed, how many approved, and who (JSON, oldest first).
    Column("required_approvals", Integer, nullable=False, server_default="1"),
    Column("approvals_count", Integer, nullable=False, server_default="0"),
    Column("approvals_json", Text, nullable=False, server_default="[]"),
    # Review: the plan's revision (1 as submitted), and an approver's open request for changes.
    Column("revision", Integer, nullable=False, server_default="1"),
    Column("changes_requested_json", Text),
    UniqueConstraint("created_by", "create_request_id", name="uq_workflows_create_request"),
    Index("ix_workflows_created", "created_at", "workflow_id"),
    Index("ix_workflows_status", "status", "created_at"),
    Index("ix_workflows_updated", "updated_at"),
    # A submitter's plans awaiting approval are counted (the quota) from this index alone: read
    # from the rows, the count walked each plan's stored JSON (SQLite keeps a large plan inline,
    # before the status), 6 MB for a principal at its quota of 64 KiB plans, in the writer.
    Index("ix_workflows_creator_status", "created_by_key", "status"),
)

# Every revision of every plan, as submitted: what approvers compare (GetRevision).
workflow_revisions = Table(
    "workflow_revisions",
    metadata,
    Column("workflow_id", String(40), primary_key=True),
    Column("revision", Integer, primary_key=True),
    Column("title", String(200), nullable=False),
    Column("plan_json", Text, nullable=False),
    Column("max_cycles", Integer, nullable=False),
    Column("orchestrator", String(100), nullable=False),
    Column("etag", String(64), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("request_id", String(128)),
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
    # The trail (auditflow.trail): the plan's etag on CREATED and decisions, this event's link
    # in the chain, and the signature of an event that ends the workflow here.
    Column("etag", String(64)),
    Column("hash", String(64)),
    Column("signature", Text),
    Column("signing_key_id", String(16)),
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


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """One row of `workflows`. It is also a `convert.SnapshotSource`: the mirrored status."""

    workflow_id: str
    title: str
    plan_json: str
    orchestrator: str
    created_by: str
    created_by_key: str
    created_by_auth: str | None
    create_request_id: str | None
    status: int
    decision: str | None
    decided_by: str | None
    decided_by_auth: str | None
    decision_comment: str | None
    decision_request_id: str | None
    decided_at: datetime | None
    cancel_requested: bool
    dispatched: bool
    max_cycles: int
    cycle: int
    progress_done: int
    progress_total: int
    last_message: str
    error_reason: str | None
    error_message: str | None
    result_json: str | None
    last_sequence: int
    created_at: datetime
    updated_at: datetime
    etag: str
    required_approvals: int
    approvals_count: int
    approvals_json: str
    revision: int
    changes_requested_json: str | None

    @classmethod
    def from_row(cls, row: Any) -> WorkflowRecord:
        """From a Core `Row` or a prepared statement's named tuple whose first columns are the
        table's, in order (`select(workflows)`, `returning(*workflows.c, …)`). Read by
        position: by name, this cost a third of an approval's writer time."""
        values = list(row[:_WORKFLOW_WIDTH])
        for index in _WORKFLOW_TIMES:
            values[index] = as_utc(values[index])
        for index in _WORKFLOW_FLAGS:
            values[index] = bool(values[index])
        return cls(*values)

    @property
    def result(self) -> dict[str, Any] | None:
        return json.loads(self.result_json) if self.result_json else None

    @property
    def approvals(self) -> list[ApprovalRecord]:
        return [ApprovalRecord.from_json(a) for a in json.loads(self.approvals_json or "[]")]

    @property
    def changes_requested(self) -> ChangeRequest | None:
        return ChangeRequest.from_json(json.loads(self.changes_requested_json)) if self.changes_requested_json else None


@dataclass(frozen=True, slots=True)
class ChangeRequest:
    """An approver's open request for changes (kept on the row while CHANGES_REQUESTED)."""

    requested_by: str
    key: str
    time: datetime
    reason: str
    revision: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChangeRequest:
        time = datetime.fromisoformat(data["time"])
        return cls(data["requested_by"], data["key"], as_utc(time) or time, data["reason"], int(data["revision"]))

    def to_json(self) -> dict[str, Any]:
        return {
            "requested_by": self.requested_by,
            "key": self.key,
            "time": self.time.isoformat(),
            "reason": self.reason,
            "revision": self.revision,
        }


@dataclass(frozen=True, slots=True)
class RevisionRecord:
    """One row of `workflow_revisions`."""

    workflow_id: str
    revision: int
    title: str
    plan_json: str
    max_cycles: int
    orchestrator: str
    etag: str
    created_by: str
    created_at: datetime
    reason: str
    request_id: str | None

    @classmethod
    def from_row(cls, row: Any) -> RevisionRecord:
        values = list(row)
        values[8] = as_utc(values[8])
        return cls(*values)


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    """One approver's approval, kept on the workflow row (at most the server's maximum)."""

    approver: str
    key: str  # auditflow.principal key: the same person however the name is spelled
    auth: str
    time: datetime
    comment: str
    etag: str
    request_id: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ApprovalRecord:
        time = datetime.fromisoformat(data["time"])
        return cls(
            data["approver"],
            data["key"],
            data.get("auth", ""),
            as_utc(time) or time,
            data.get("comment", ""),
            data.get("etag", ""),
            data.get("request_id", ""),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "approver": self.approver,
            "key": self.key,
            "auth": self.auth,
            "time": self.time.isoformat(),
            "comment": self.comment,
            "etag": self.etag,
            "request_id": self.request_id,
        }


_WORKFLOW_FIELDS = tuple(f.name for f in fields(WorkflowRecord))
if tuple(workflows.c.keys()) != _WORKFLOW_FIELDS:  # from_row reads by position
    raise RuntimeError("WorkflowRecord's fields must be the workflows table's columns, in order")
_WORKFLOW_WIDTH = len(_WORKFLOW_FIELDS)
_WORKFLOW_TIMES = tuple(_WORKFLOW_FIELDS.index(name) for name in ("decided_at", "created_at", "updated_at"))
_WORKFLOW_FLAGS = tuple(_WORKFLOW_FIELDS.index(name) for name in ("cancel_requested", "dispatched"))


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One row of `workflow_events`: the gateway's own events (created, decided, cancelled)."""

    workflow_id: str
    sequence: int
    type: int
    status: int
    message: str
    actor: str
    time: datetime
    actor_auth: str | None = None
    etag: str | None = None
    hash: str | None = None
    signature: str | None = None
    signing_key_id: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> EventRecord:
        m = row._mapping
        return cls(
            m["workflow_id"],
            m["sequence"],
            m["type"],
            m["status"],
            m["message"],
            m["actor"],
            as_utc(m["time"]) or datetime.now(UTC),
            m["actor_auth"],
            m["etag"],
            m["hash"],
            m["signature"],
            m["signing_key_id"],
        )

    def content(self) -> trail.Content:
        return _content(self)


_EVENT_FIELDS = tuple(f.name for f in fields(EventRecord))


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A message for the processor, committed with the decision that caused it; only the
    relay (`gateway.outbox`) knows what its payload says."""

    id: int
    workflow_id: str
    kind: str
    payload: bytes
    created_at: datetime


# Statements run on every approval, dispatch, mirrored event or watch are built once, with
# bound parameters (building one and its cache key costs more than running the cached
# compiled form). Names start with "b_" so that they never collide with the column names an
# UPDATE takes its SET values from.
_WORKFLOW_ID = workflows.c.workflow_id == bindparam("b_workflow_id")
_GET = select(workflows).where(_WORKFLOW_ID)
_GET_LOCKED = _GET.with_for_update()
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
_EVENT_HASH = select(workflow_events.c.hash).where(
    workflow_events.c.workflow_id == bindparam("b_workflow_id"),
    workflow_events.c.sequence == bindparam("b_sequence"),
)


def get(conn: Connection, workflow_id: str, *, lock: bool = False) -> WorkflowRecord | None:
    """One workflow; `lock`: FOR UPDATE on PostgreSQL, for a decision that reads before it
    writes (SQLite's one writer needs no lock)."""
    row = conn.execute(_GET_LOCKED if lock else _GET, {"b_workflow_id": workflow_id}).first()
    return None if row is None else WorkflowRecord.from_row(row)


def find_by_request(conn: Connection, created_by: str, request_id: str) -> WorkflowRecord | None:
    query = select(workflows).where(
        and_(workflows.c.created_by == created_by, workflows.c.create_request_id == request_id)
    )
    row = conn.execute(query).first()
    return None if row is None else WorkflowRecord.from_row(row)


# These run on every decision: prepared (see auditflow.prepared), not executed through Core.
_INSERT_EVENT = Prepared(insert(workflow_events).values({c.key: bindparam(c.key) for c in workflow_events.c}))
_INSERT_OUTBOX = Prepared(
    insert(outbox)
    .values(
        workflow_id=bindparam("workflow_id"),
        kind=bindparam("kind"),
        payload=bindparam("payload"),
        created_at=bindparam("created_at"),
    )
    .returning(outbox.c.id)
)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append: its hash links it to `previous`, the hash of the event before."""

    workflow_id: str
    sequence: int
    type: int
    status: int
    message: str
    actor: str
    time: datetime
    previous: str
    actor_auth: str | None = None
    etag: str | None = None


def _content(event: EventRecord | NewEvent) -> trail.Content:
    """What an event's hash covers (the gateway's events have no cycle, progress or result)."""
    return trail.Content(
        event.workflow_id,
        event.sequence,
        event.type,
        event.status,
        0,
        0,
        0,
        event.message,
        event.actor,
        event.actor_auth or "",
        event.time,
        event.etag or "",
    )


def append_event(conn: Connection, new: NewEvent, signer: trail.Signer | None = None) -> EventRecord:
    """Insert an event, its hash linked to the one before; an event that ends the workflow is
    signed when the gateway has a trail key."""
    digest = trail.link(new.previous, _content(new))
    signature = key_id = None
    if signer is not None and statuses.is_terminal(new.status):
        signature, key_id = signer.sign(new.workflow_id, new.sequence, digest), signer.key_id
    record = EventRecord(
        new.workflow_id,
        new.sequence,
        new.type,
        new.status,
        new.message,
        new.actor,
        new.time,
        new.actor_auth,
        new.etag,
        digest,
        signature,
        key_id,
    )
    _INSERT_EVENT.run(conn, {name: getattr(record, name) for name in _EVENT_FIELDS})
    return record


def event_hash(conn: Connection, workflow_id: str, sequence: int) -> str:
    """The hash of one event (GENESIS before the first; "" for an event without one)."""
    if sequence == 0:
        return trail.GENESIS
    found = conn.execute(_EVENT_HASH, {"b_workflow_id": workflow_id, "b_sequence": sequence}).scalar()
    return "" if found is None else str(found)


def previous_hash_column() -> Any:
    """For the RETURNING of an UPDATE that appends an event: the hash of the event before the
    new last_sequence (so the decision needs no read of its own)."""
    # Qualified by hand: SQLAlchemy renders RETURNING's columns unqualified, which inside the
    # subquery would name the event's own columns (and match any workflow's first event).
    before = workflow_events.alias("before")
    previous = select(before.c.hash).where(
        before.c.workflow_id == literal_column("workflows.workflow_id"),
        before.c.sequence == literal_column("workflows.last_sequence") - 1,
    )
    return previous.scalar_subquery().label("previous_hash")


def events_after(conn: Connection, workflow_id: str, after: int) -> list[EventRecord]:
    rows = conn.execute(_EVENTS_AFTER, {"b_workflow_id": workflow_id, "b_after": after})
    return [EventRecord.from_row(row) for row in rows]


def add_outbox(conn: Connection, workflow_id: str, kind: str, payload: bytes, time: datetime) -> OutboxRow:
    values = {"workflow_id": workflow_id, "kind": kind, "payload": payload, "created_at": time}
    row = _INSERT_OUTBOX.run(conn, values)
    return OutboxRow(int(row.id), workflow_id, kind, payload, time)


def pending_outbox(conn: Connection, known: Collection[int] = ()) -> list[OutboxRow]:
    """Outbox rows not in `known`, oldest first. Only ids are read for all rows, so that a
    large backlog the relay already holds costs little to scan."""
    ids = [r[0] for r in conn.execute(select(outbox.c.id).order_by(outbox.c.id)) if r[0] not in known]
    found: list[OutboxRow] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = conn.execute(select(outbox).where(outbox.c.id.in_(chunk)).order_by(outbox.c.id))
        found.extend(
            OutboxRow(r.id, r.workflow_id, r.kind, r.payload, as_utc(r.created_at) or r.created_at) for r in rows
        )
    return found


def outbox_backlog(conn: Connection) -> tuple[int, datetime | None]:
    """How many outbox rows wait, and when the oldest was committed (None: no row)."""
    count, oldest = conn.execute(select(func.count(), func.min(outbox.c.created_at))).one()
    return int(count), as_utc(oldest)


def clear_cancel_requested(conn: Connection, workflow_id: str) -> None:
    conn.execute(update(workflows).where(workflows.c.workflow_id == workflow_id).values(cancel_requested=False))


def delete_outbox(conn: Connection, outbox_id: int) -> None:
    conn.execute(_DELETE_OUTBOX, {"b_id": outbox_id})


def to_follow(conn: Connection) -> list[tuple[str, int]]:
    """Approved workflows whose run has not ended (dispatched or not: a dispatch may land at
    the processor before the gateway records it), with the last sequence the row holds:
    where the feed catches up from."""
    query = (
        select(workflows.c.workflow_id, workflows.c.last_sequence)
        .where(workflows.c.status.in_(list(statuses.PROCESSING)))
        .order_by(workflows.c.decided_at, workflows.c.workflow_id)
    )
    return [(r[0], r[1]) for r in conn.execute(query)]


def positions(conn: Connection, workflow_ids: Sequence[str]) -> dict[str, int]:
    """{workflow: the last sequence its row holds}, of those that exist."""
    query = select(workflows.c.workflow_id, workflows.c.last_sequence).where(
        workflows.c.workflow_id.in_(list(workflow_ids))
    )
    return {r[0]: r[1] for r in conn.execute(query)}


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


def add_revision(conn: Connection, record: RevisionRecord) -> None:
    conn.execute(insert(workflow_revisions).values(**{f.name: getattr(record, f.name) for f in fields(record)}))


def get_revision(conn: Connection, workflow_id: str, revision: int) -> RevisionRecord | None:
    row = conn.execute(
        select(workflow_revisions).where(
            workflow_revisions.c.workflow_id == workflow_id, workflow_revisions.c.revision == revision
        )
    ).first()
    return RevisionRecord.from_row(row) if row is not None else None


def find_revision_request(conn: Connection, workflow_id: str, request_id: str) -> RevisionRecord | None:
    row = conn.execute(
        select(workflow_revisions).where(
            workflow_revisions.c.workflow_id == workflow_id, workflow_revisions.c.request_id == request_id
        )
    ).first()
    return RevisionRecord.from_row(row) if row is not None else None


@dataclass(frozen=True)
class ListFilter:
    """Which workflows a list or a watch shows (the caller-relative parts resolved by the
    caller: `created_by_key`, and `awaiting_key` for "awaiting my approval")."""

    statuses: tuple[int, ...] = ()
    created_by_key: str | None = None
    title_contains: str = ""
    # "Awaiting my approval": AWAITING_APPROVAL, not submitted by this key (unless self-approval
    # is allowed) and not approved by it yet. The role is the caller's to check.
    awaiting_key: str | None = None
    self_approval: bool = False

    def matches(self, record: WorkflowRecord) -> bool:
        """The same rules as the query, on one record (the watch's changes)."""
        if self.statuses and record.status not in self.statuses:
            return False
        if self.created_by_key is not None and record.created_by_key != self.created_by_key:
            return False
        if self.title_contains and self.title_contains.casefold() not in record.title.casefold():
            return False
        return self.awaiting_key is None or awaits_approval_of(record, self.awaiting_key, self.self_approval)

    def where(self, query: Any) -> Any:
        if self.statuses:
            query = query.where(workflows.c.status.in_(list(self.statuses)))
        if self.created_by_key is not None:
            query = query.where(workflows.c.created_by_key == self.created_by_key)
        if self.title_contains:
            query = query.where(workflows.c.title.icontains(self.title_contains, autoescape=True))
        if self.awaiting_key is not None:
            query = query.where(workflows.c.status == pb.WORKFLOW_STATUS_AWAITING_APPROVAL)
            if not self.self_approval:
                query = query.where(workflows.c.created_by_key != self.awaiting_key)
        return query


def awaits_approval_of(record: WorkflowRecord, key: str, self_approval: bool = False) -> bool:
    """Whether the person with `key` (an approver) may approve the record now."""
    if record.status != pb.WORKFLOW_STATUS_AWAITING_APPROVAL:
        return False
    if record.created_by_key == key and not self_approval:
        return False
    return all(a.key != key for a in record.approvals)


def changed_since(conn: Connection, since: datetime, limit: int) -> list[WorkflowRecord]:
    """Workflows written at or after `since`, oldest change first (the collection watch)."""
    query = select(workflows).where(workflows.c.updated_at >= since).order_by(workflows.c.updated_at).limit(limit)
    return [WorkflowRecord.from_row(row) for row in conn.execute(query)]


class PlanOutline(ColumnElement[str]):
    """A stored plan's outline, made by the database: each step's procedure and sources, in
    order, without the parameters (JSON, as `convert.plan_outline` reads it). A step's
    parameters can weigh 16 KiB: a page of 500 rows that read the plans to drop their
    parameters copied 32 MB out of the database and parsed it, on the gateway's CPU."""

    inherit_cache = True
    type = Text()
    _traverse_internals = [("plan", InternalTraversal.dp_clauseelement)]

    def __init__(self, plan: ColumnElement[str]) -> None:
        self.plan = plan


# The outline in each dialect's JSON functions ({plan}: the plan's column).
_OUTLINE_SQL = {
    "sqlite": (
        "(SELECT json_group_array(json_object('procedure', json_extract(step.value, '$.procedure'), "
        "'sources', json(coalesce(json_extract(step.value, '$.sources'), '[]')))) "
        "FROM (SELECT value FROM json_each({plan}) ORDER BY key) AS step)"
    ),
    "postgresql": (
        "(SELECT coalesce(json_agg(json_build_object('procedure', step.value -> 'procedure', "
        "'sources', coalesce(step.value -> 'sources', '[]'::json)) ORDER BY step.n), '[]'::json)::text "
        "FROM json_array_elements(({plan})::json) WITH ORDINALITY AS step(value, n))"
    ),
}


def _outline_sql(element: PlanOutline, compiler: Any, **kw: Any) -> str:
    return _OUTLINE_SQL[compiler.dialect.name].format(plan=compiler.process(element.plan, **kw))


for _dialect in _OUTLINE_SQL:
    compiles(PlanOutline, _dialect)(_outline_sql)


# A list's rows: the table's columns in order (`WorkflowRecord.from_row`), but `plan_json`
# holds the plan's outline and `result_json` is left out (a run's result can weigh 1 MiB).
# Such a record is a summary's (`gateway.messages.summary`): never a plan to run or show.
SUMMARY_COLUMNS = tuple(
    PlanOutline(column).label("plan_json")
    if column.name == "plan_json"
    else null().label("result_json")
    if column.name == "result_json"
    else column
    for column in workflows.c
)


def list_page(
    conn: Connection, filter_: ListFilter, limit: int, after: tuple[datetime, str] | None
) -> list[WorkflowRecord]:
    """Newest first, as summaries (`SUMMARY_COLUMNS`); keyset pagination on (created_at,
    workflow_id). The approvals part of "awaiting my approval" is checked on the rows (it
    lives in JSON), page by page."""
    query = select(*SUMMARY_COLUMNS).order_by(workflows.c.created_at.desc(), workflows.c.workflow_id.desc())
    query = query.limit(limit)
    query = filter_.where(query)
    if after is not None:
        created_at, workflow_id = after
        query = query.where(
            or_(
                workflows.c.created_at < created_at,
                and_(workflows.c.created_at == created_at, workflows.c.workflow_id < workflow_id),
            )
        )
    return [WorkflowRecord.from_row(row) for row in conn.execute(query)]


def list_matching(
    conn: Connection, filter_: ListFilter, limit: int, after: tuple[datetime, str] | None
) -> list[WorkflowRecord]:
    """Up to `limit` rows that match the whole filter, newest first (reads on past rows that
    the query cannot rule out, a batch at a time)."""
    if filter_.awaiting_key is None:  # the query decides it all
        return list_page(conn, filter_, limit, after)
    found: list[WorkflowRecord] = []
    while len(found) < limit:
        batch = list_page(conn, filter_, max(limit, 64), after)
        found.extend(r for r in batch if filter_.matches(r))
        if len(batch) < max(limit, 64):
            break
        after = (batch[-1].created_at, batch[-1].workflow_id)
    return found[:limit]

"""The processor's tables (`runs`, `run_events`) and the queries on them.

Every function takes a `sqlalchemy.Connection` inside a transaction opened by
`auditflow.db.Database`; none commits. Writers that allocate event sequences first lock the
run row (`lock_run`: `SELECT ... FOR UPDATE` on PostgreSQL; SQLite is serialized by the
single writer), so `last_sequence` grows by exactly one per event, with no gaps, whichever
processor writes.

A run's snapshot fields (status, cycle, progress, message, error, result) always equal those
of its newest event: `append` copies them from the last event it inserts. An event row holds
everything needed to rebuild the snapshot as of that event, so watchers replaying the log
see the state each event produced.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
    Boolean,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from auditflow import statuses, trail
from auditflow.convert import as_utc
from auditflow.v1 import workflow_pb2 as pb
from processor import notify as notifications

S = pb.WorkflowStatus
ACTOR = "processor"
ACTIVE_STATUSES = (S.WORKFLOW_STATUS_QUEUED, S.WORKFLOW_STATUS_RUNNING)
MAX_MESSAGE = 2000

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("workflow_id", String(64), primary_key=True),
    Column("title", String(400), nullable=False),
    Column("plan_json", Text, nullable=False),
    Column("orchestrator", String(100), nullable=False),
    Column("status", Integer, nullable=False),
    Column("cycle", Integer, nullable=False, default=0),
    Column("max_cycles", Integer, nullable=False),
    Column("state_json", Text, nullable=True),
    Column("progress_done", Integer, nullable=False, default=0),
    Column("progress_total", Integer, nullable=False, default=0),
    Column("last_message", Text, nullable=False, default=""),
    Column("error_reason", String(100), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("result_json", Text, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    # Findings stored so far (processor/findings_store.py numbers the next ones on from here).
    Column("findings_count", Integer, nullable=False, default=0, server_default="0"),
    Column("base_sequence", BigInteger, nullable=False),
    Column("last_sequence", BigInteger, nullable=False),
    # The hash of the last event (auditflow.trail): the gateway's last one until the first here.
    Column("last_hash", String(64), nullable=True),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    # The fencing token: one more on every claim, so a lease taken again (even by the same
    # worker id) is told apart from the one before; commits and renewals check it.
    Column("lease_epoch", BigInteger, nullable=False, default=0, server_default="0"),
    # When the gateway committed the approval, and the trace the run's spans belong to.
    Column("approved_at", DateTime(timezone=True), nullable=True),
    Column("trace_context", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_runs_claimable", runs.c.status, runs.c.lease_expires_at)
Index("ix_runs_lease_owner", runs.c.lease_owner)
Index("ix_runs_updated", runs.c.updated_at)

run_events = Table(
    "run_events",
    metadata,
    Column("workflow_id", String(64), primary_key=True),
    Column("sequence", BigInteger, primary_key=True),
    Column("type", Integer, nullable=False),
    Column("status", Integer, nullable=False),
    Column("cycle", Integer, nullable=False),
    Column("max_cycles", Integer, nullable=False),
    Column("progress_done", Integer, nullable=False),
    Column("progress_total", Integer, nullable=False),
    Column("message", Text, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("error_reason", String(100), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("result_json", Text, nullable=True),
    # How a person who caused the event authenticated to the gateway; NULL for our own events.
    Column("actor_auth", String(300), nullable=True),
    # The trail (auditflow.trail): this event's link, the digest of a completed run's result,
    # and the signature of the event that ends the run.
    Column("hash", String(64), nullable=True),
    Column("result_digest", String(64), nullable=True),
    Column("signature", Text, nullable=True),
    Column("signing_key_id", String(16), nullable=True),
)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class RunRecord:
    """One row of `runs`, decoded."""

    workflow_id: str
    title: str
    plan: list[dict[str, Any]]
    orchestrator: str
    status: int
    cycle: int
    max_cycles: int
    state: dict[str, Any] | None
    progress_done: int
    progress_total: int
    last_message: str
    error_reason: str | None
    error_message: str | None
    result: dict[str, Any] | None
    cancel_requested: bool
    consecutive_failures: int
    findings_count: int
    base_sequence: int
    last_sequence: int
    last_hash: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    lease_epoch: int
    approved_at: datetime | None
    trace_context: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> RunRecord:
        m = row._mapping
        return cls(
            workflow_id=m["workflow_id"],
            title=m["title"],
            plan=json.loads(m["plan_json"]),
            orchestrator=m["orchestrator"],
            status=m["status"],
            cycle=m["cycle"],
            max_cycles=m["max_cycles"],
            state=_loads(m["state_json"]),
            progress_done=m["progress_done"],
            progress_total=m["progress_total"],
            last_message=m["last_message"],
            error_reason=m["error_reason"],
            error_message=m["error_message"],
            result=_loads(m["result_json"]),
            cancel_requested=bool(m["cancel_requested"]),
            consecutive_failures=m["consecutive_failures"],
            findings_count=m["findings_count"],
            base_sequence=m["base_sequence"],
            last_sequence=m["last_sequence"],
            last_hash=m["last_hash"],
            lease_owner=m["lease_owner"],
            lease_expires_at=as_utc(m["lease_expires_at"]),
            lease_epoch=m["lease_epoch"],
            approved_at=as_utc(m["approved_at"]),
            trace_context=m["trace_context"],
            created_at=as_utc(m["created_at"]) or datetime.now(UTC),
            updated_at=as_utc(m["updated_at"]) or datetime.now(UTC),
        )

    @property
    def lease(self) -> Lease | None:
        """The lease on the run, if anyone holds one."""
        return None if self.lease_owner is None else Lease(self.lease_owner, self.lease_epoch)


@dataclass(frozen=True)
class Lease:
    """A processor's hold on a run: its worker id and the fencing token of its claim."""

    owner: str
    epoch: int

    def params(self) -> dict[str, Any]:
        return {"b_owner": self.owner, "b_epoch": self.epoch}


@dataclass(frozen=True)
class Appended:
    """A run as a write left it, and the events that write appended (in sequence order)."""

    run: RunRecord
    events: list[EventRecord]


@dataclass(frozen=True)
class Inserted(Appended):
    """An insert's outcome: `created` is False when the run was there already (then `run` is
    as found and `events` is empty)."""

    created: bool


@dataclass(frozen=True)
class NewEvent:
    """An event to append: its type, and the snapshot it leaves the run in."""

    type: int
    status: int
    cycle: int
    progress_done: int
    progress_total: int
    message: str
    actor: str = ACTOR
    error_reason: str | None = None
    error_message: str | None = None
    result: dict[str, Any] | None = None
    actor_auth: str | None = None

    @classmethod
    def following(cls, run: RunRecord, type: int, message: str, **changes: Any) -> NewEvent:
        """An event that keeps the run's current snapshot except for `changes`."""
        base = cls(
            type=type,
            status=run.status,
            cycle=run.cycle,
            progress_done=run.progress_done,
            progress_total=run.progress_total,
            message=message,
            error_reason=run.error_reason,
            error_message=run.error_message,
            result=run.result,
        )
        return replace(base, **changes)


@dataclass(frozen=True)
class EventRecord:
    """One row of `run_events`, decoded: an event and the snapshot as of it."""

    workflow_id: str
    sequence: int
    type: int
    status: int
    cycle: int
    max_cycles: int
    progress_done: int
    progress_total: int
    message: str
    actor: str
    time: datetime
    error_reason: str | None = None
    error_message: str | None = None
    result: dict[str, Any] | None = field(default=None)
    actor_auth: str | None = None
    hash: str | None = None
    result_digest: str | None = None
    signature: str | None = None
    signing_key_id: str | None = None

    def content(self) -> trail.Content:
        """What its hash covers."""
        return trail.Content(
            self.workflow_id,
            self.sequence,
            self.type,
            self.status,
            self.cycle,
            self.progress_done,
            self.progress_total,
            self.message,
            self.actor,
            self.actor_auth or "",
            self.time,
            "",
            self.result_digest or "",
        )

    # The snapshot as of this event (auditflow.convert.SnapshotSource).
    @property
    def last_message(self) -> str:
        return self.message

    @property
    def updated_at(self) -> datetime:
        return self.time

    @property
    def last_sequence(self) -> int:
        return self.sequence

    @classmethod
    def from_row(cls, row: Row[Any]) -> EventRecord:
        m = row._mapping
        return cls(
            workflow_id=m["workflow_id"],
            sequence=m["sequence"],
            type=m["type"],
            status=m["status"],
            cycle=m["cycle"],
            max_cycles=m["max_cycles"],
            progress_done=m["progress_done"],
            progress_total=m["progress_total"],
            message=m["message"],
            actor=m["actor"],
            time=as_utc(m["time"]) or datetime.now(UTC),
            error_reason=m["error_reason"],
            error_message=m["error_message"],
            result=_loads(m["result_json"]),
            actor_auth=m["actor_auth"],
            hash=m["hash"],
            result_digest=m["result_digest"],
            signature=m["signature"],
            signing_key_id=m["signing_key_id"],
        )


# --- reads ---------------------------------------------------------------------------


# The statements that run on every Enqueue, cycle and watch are built once, with bound
# parameters: building a statement and its cache key costs several times what executing the
# compiled, cached form does (measured: an UPDATE … RETURNING of a run 232 µs built per call,
# 39 µs pre-built). Bound parameter names start with "b_" so that they never collide with the
# column names an UPDATE takes its SET values from.
_RUN_ID = runs.c.workflow_id == bindparam("b_workflow_id")
_NOW: BindParameter[datetime] = bindparam("b_now")  # (typed by the column it is compared with)
_CLAIMABLE = and_(
    runs.c.status.in_(ACTIVE_STATUSES),
    or_(runs.c.lease_owner.is_(None), runs.c.lease_expires_at < _NOW),
)
_NOT_EXCLUDED = runs.c.workflow_id.not_in(bindparam("b_exclude", expanding=True))
_GET_RUN = select(runs).where(_RUN_ID)
_LOCK_RUN = _GET_RUN.with_for_update()
_LEASE_HELD = and_(
    runs.c.lease_owner == bindparam("b_owner"),
    runs.c.lease_epoch == bindparam("b_epoch"),
    runs.c.status.in_(ACTIVE_STATUSES),
)
_LOCK_LEASED_RUN = _LOCK_RUN.where(_LEASE_HELD)
_EVENTS_AFTER = (
    select(run_events)
    .where(run_events.c.workflow_id == bindparam("b_workflow_id"), run_events.c.sequence > bindparam("b_after"))
    .order_by(run_events.c.sequence)
    .limit(bindparam("b_limit"))
)
_COUNT_BY_STATUS = select(runs.c.status, func.count()).group_by(runs.c.status)
_COUNT_CLAIMABLE = select(func.count()).select_from(runs).where(_CLAIMABLE, _NOT_EXCLUDED)
_INSERT_RUN = insert(runs).returning(*runs.c)
_INSERT_EVENTS = insert(run_events)
# SET takes the columns named in the parameters of each execution.
_UPDATE_RUN = update(runs).where(_RUN_ID).returning(*runs.c)
_RUN_COLUMNS = frozenset(runs.c.keys())
_CANDIDATES = (
    select(runs.c.workflow_id)
    .where(_CLAIMABLE, _NOT_EXCLUDED)
    .order_by(runs.c.created_at)
    .limit(bindparam("b_limit"))
    .with_for_update(skip_locked=True)
)
_TAKE = (
    update(runs)
    .where(runs.c.workflow_id.in_(bindparam("b_ids", expanding=True)), _CLAIMABLE)
    .values(
        lease_owner=bindparam("b_owner"),
        lease_expires_at=bindparam("b_expires_at"),
        lease_epoch=runs.c.lease_epoch + 1,
    )
    .returning(*runs.c)
)
_RENEW_LEASE = update(runs).where(_RUN_ID, _LEASE_HELD).values(lease_expires_at=bindparam("b_expires_at"))


def get_run(conn: Connection, workflow_id: str) -> RunRecord | None:
    row = conn.execute(_GET_RUN, {"b_workflow_id": workflow_id}).first()
    return None if row is None else RunRecord.from_row(row)


def lock_run(conn: Connection, workflow_id: str, *, lease: Lease | None = None) -> RunRecord | None:
    """The run, locked for update until the transaction ends; with `lease`, only if that
    lease still holds (None means it was lost)."""
    if lease is None:
        row = conn.execute(_LOCK_RUN, {"b_workflow_id": workflow_id}).first()
    else:
        row = conn.execute(_LOCK_LEASED_RUN, {"b_workflow_id": workflow_id, **lease.params()}).first()
    return None if row is None else RunRecord.from_row(row)


def events_after(conn: Connection, workflow_id: str, after: int, limit: int) -> list[EventRecord]:
    rows = conn.execute(_EVENTS_AFTER, {"b_workflow_id": workflow_id, "b_after": after, "b_limit": limit})
    return [EventRecord.from_row(row) for row in rows]


@dataclass(frozen=True, slots=True)
class EventCursor:
    """A reader's place in one run's log: it has the events up to `after`."""

    workflow_id: str
    after: int


def events_after_cursors(
    conn: Connection, cursors: Sequence[EventCursor], limit: int
) -> tuple[list[EventRecord], bool]:
    """The events after each cursor, at most `limit` in all, cursor by cursor; True as well
    when the limit cut the answer."""
    found: list[EventRecord] = []
    for cursor in cursors:
        room = limit - len(found)
        if room <= 0:
            return found, True
        page = events_after(conn, cursor.workflow_id, cursor.after, room + 1)
        if len(page) > room:
            return [*found, *page[:room]], True
        found.extend(page)
    return found, False


def changed_since(conn: Connection, since: datetime) -> dict[str, int]:
    """The last sequence of each run written since `since`, by workflow id (the tail's look
    at what other processors committed)."""
    query = select(runs.c.workflow_id, runs.c.last_sequence).where(runs.c.updated_at >= since)
    return {row[0]: row[1] for row in conn.execute(query)}


def count_by_status(conn: Connection) -> dict[int, int]:
    """How many runs are in each status."""
    return {int(status): int(n) for status, n in conn.execute(_COUNT_BY_STATUS)}


def count_claimable(conn: Connection, now: datetime, exclude: Collection[str] = ()) -> int:
    return int(conn.execute(_COUNT_CLAIMABLE, {"b_now": now, "b_exclude": list(exclude)}).scalar_one())


# --- writes --------------------------------------------------------------------------


def insert_run(
    conn: Connection,
    *,
    workflow_id: str,
    title: str,
    plan: list[dict[str, Any]],
    orchestrator: str,
    max_cycles: int,
    base_sequence: int,
    base_hash: str | None,
    queued_message: str,
    now: datetime,
    approved_at: datetime | None = None,
    trace_context: str | None = None,
) -> Inserted:
    """Insert a QUEUED run with its QUEUED event (sequence base_sequence + 1); if the run
    exists, return it unchanged. Other processors are not
    told here: the caller calls `announce_queued` if the run is left for any processor to
    claim (not when it claims the run in the same transaction)."""
    existing = lock_run(conn, workflow_id)
    if existing is not None:
        return Inserted(existing, [], created=False)
    inserted = conn.execute(
        _INSERT_RUN,
        dict(
            workflow_id=workflow_id,
            title=title,
            plan_json=json.dumps(plan, sort_keys=True),
            orchestrator=orchestrator,
            status=S.WORKFLOW_STATUS_QUEUED,
            cycle=0,
            max_cycles=max_cycles,
            progress_total=len(plan),
            base_sequence=base_sequence,
            last_sequence=base_sequence,
            last_hash=base_hash,
            approved_at=approved_at,
            trace_context=trace_context,
            created_at=now,
            updated_at=now,
        ),
    ).one()
    run = RunRecord.from_row(inserted)
    event = NewEvent.following(run, pb.EventType.EVENT_TYPE_QUEUED, queued_message)
    appended = append(conn, run, [event], {}, now)
    return Inserted(appended.run, appended.events, created=True)


def announce_queued(conn: Connection) -> None:
    """Tell the other processors a run is claimable (an idle one claims it at once)."""
    notify(conn, notifications.RUNS)


_NOTIFY = text(f"SELECT pg_notify('{notifications.CHANNEL}', :payload)")


def notify(conn: Connection, payload: str) -> None:
    """Tell the other processors (PostgreSQL sends it at commit; `processor.notify`). Once per
    payload and transaction: a group commit of many appends sends one, not one each."""
    if conn.dialect.name != "postgresql":
        return
    transaction = conn.get_transaction()
    sent: tuple[Any, set[str]] | None = conn.info.get(_NOTIFIED)
    if sent is None or sent[0] is not transaction:  # (held here, so never a reused id)
        sent = conn.info[_NOTIFIED] = (transaction, set())
    if payload not in sent[1]:
        sent[1].add(payload)
        conn.execute(_NOTIFY, {"payload": payload})


_NOTIFIED = "auditflow_notified"  # conn.info: (the transaction, the payloads it has notified)


def append(
    conn: Connection,
    run: RunRecord,
    events: Sequence[NewEvent],
    changes: dict[str, Any],
    now: datetime,
    signer: trail.Signer | None = None,
) -> Appended:
    """Append `events` after run.last_sequence and update the run: its snapshot fields from
    the last event, plus `changes` (other columns of `runs`). `run` must be locked. Each event
    is linked into the trail; the one that ends the run is signed when `signer` is given."""
    if not changes.keys() <= _RUN_COLUMNS:  # (the pre-built UPDATE would silently skip them)
        raise ValueError(f"not columns of runs: {sorted(changes.keys() - _RUN_COLUMNS)}")
    records: list[EventRecord] = []
    previous = run.last_hash or ""
    for i, event in enumerate(events):
        record = _linked(_event_record(run, run.last_sequence + i + 1, event, now), previous, signer)
        records.append(record)
        previous = record.hash or ""
    values: dict[str, Any] = {"updated_at": now, **changes}
    if records:
        last, written = events[-1], records[-1]
        values.update(
            status=last.status,
            cycle=last.cycle,
            progress_done=last.progress_done,
            progress_total=last.progress_total,
            last_message=last.message,
            error_reason=last.error_reason,
            error_message=last.error_message,
            result_json=_dumps(written.result),
            last_sequence=written.sequence,
            last_hash=written.hash,
        )
        conn.execute(_INSERT_EVENTS, [_event_values(r) for r in records])
        notify(conn, notifications.EVENTS)
    updated = conn.execute(_UPDATE_RUN, {"b_workflow_id": run.workflow_id, **values}).one()
    return Appended(RunRecord.from_row(updated), records)


def _event_record(run: RunRecord, sequence: int, event: NewEvent, now: datetime) -> EventRecord:
    return EventRecord(
        workflow_id=run.workflow_id,
        sequence=sequence,
        type=event.type,
        status=event.status,
        cycle=event.cycle,
        max_cycles=run.max_cycles,
        progress_done=event.progress_done,
        progress_total=event.progress_total,
        message=event.message[:MAX_MESSAGE],
        actor=event.actor,
        time=now,
        error_reason=event.error_reason,
        error_message=event.error_message,
        result=event.result,
        actor_auth=event.actor_auth,
    )


def _linked(record: EventRecord, previous: str, signer: trail.Signer | None) -> EventRecord:
    """The event with its hash; a completed run's result bound by its digest, and given its
    "trail" (the final hash, to pin in a report); the end of the run signed if we can."""
    completed = record.type == pb.EventType.EVENT_TYPE_COMPLETED and record.result is not None
    if completed:
        record = replace(record, result_digest=trail.result_digest(record.result))
    record = replace(record, hash=trail.link(previous, record.content()))
    if signer is not None and statuses.is_terminal(record.status):
        record = replace(
            record,
            signature=signer.sign(record.workflow_id, record.sequence, record.hash or ""),
            signing_key_id=signer.key_id,
        )
    if completed:
        pinned = {"sequence": record.sequence, "hash": record.hash}
        if record.signature:
            pinned.update(signature=record.signature, signing_key_id=record.signing_key_id)
        record = replace(record, result={**(record.result or {}), "trail": pinned})
    return record


def _event_values(record: EventRecord) -> dict[str, Any]:
    return {
        "workflow_id": record.workflow_id,
        "sequence": record.sequence,
        "type": record.type,
        "status": record.status,
        "cycle": record.cycle,
        "max_cycles": record.max_cycles,
        "progress_done": record.progress_done,
        "progress_total": record.progress_total,
        "message": record.message,
        "actor": record.actor,
        "time": record.time,
        "error_reason": record.error_reason,
        "error_message": record.error_message,
        "result_json": _dumps(record.result),
        "actor_auth": record.actor_auth,
        "hash": record.hash,
        "result_digest": record.result_digest,
        "signature": record.signature,
        "signing_key_id": record.signing_key_id,
    }


def claim(
    conn: Connection,
    *,
    owner: str,
    now: datetime,
    expires_at: datetime,
    limit: int,
    exclude: Collection[str] = (),
) -> list[RunRecord]:
    """Take the lease of up to `limit` claimable runs (oldest first) and return them with
    their new lease; the claim changes nothing else, so the caller can still tell a first
    claim (QUEUED) from a reclaim.

    The selecting subquery uses FOR UPDATE SKIP LOCKED so that processors on PostgreSQL
    never wait for each other's candidates; the UPDATE repeats the condition, so a run taken
    meanwhile is not taken twice.
    """
    found = conn.execute(_CANDIDATES, {"b_now": now, "b_exclude": list(exclude), "b_limit": limit})
    ids = list(found.scalars())
    if not ids:
        return []
    lease = {"b_ids": ids, "b_now": now, "b_owner": owner, "b_expires_at": expires_at}
    taken = {row.workflow_id: RunRecord.from_row(row) for row in conn.execute(_TAKE, lease)}
    return [taken[i] for i in ids if i in taken]


def renew_lease(conn: Connection, workflow_id: str, lease: Lease, expires_at: datetime) -> bool:
    """Extend `lease` if it still holds; False means it was lost."""
    values = {"b_workflow_id": workflow_id, "b_expires_at": expires_at, **lease.params()}
    return conn.execute(_RENEW_LEASE, values).rowcount == 1


def release_leases(conn: Connection, owner: str, keep: Collection[str] = ()) -> int:
    """Give up `owner`'s leases (but those in `keep`) so another processor can claim the runs
    at once."""
    query = update(runs).where(runs.c.lease_owner == owner)
    if keep:
        query = query.where(runs.c.workflow_id.not_in(list(keep)))
    released = int(conn.execute(query.values(lease_owner=None, lease_expires_at=None)).rowcount)
    if released:
        notify(conn, notifications.RUNS)
    return released

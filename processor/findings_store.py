"""Every finding of every run: the table, its queries and its records.

A cycle hands over the findings its procedures found (`CycleResult.findings`); the scheduler
stores them in the transaction that checkpoints the cycle, numbered on from the run's
`findings_count`, so a cycle repeated after a crash neither loses nor repeats one, and a
finding's number (its id, "f" and the number) never changes. Results and snapshots carry
only each step's summary, so no finding has to fit in a message.

What a procedure hands over is checked and bounded here before it is stored (`normalize`):
a severity of high, medium or low; a decimal amount; at most `MAX_ENTRY_IDS` entry ids (the
count of all of them is kept); an explanation of at most `MAX_EXPLANATION` characters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    and_,
    func,
    insert,
    select,
    tuple_,
)

from auditflow.errors import invalid
from auditflow.findings_contract import SEVERITIES, check_filter
from auditflow.v1 import workflow_pb2 as pb
from processor.store import metadata

MAX_ENTRY_IDS = 1000
MAX_EXPLANATION = 10_000
INT64 = 2**63 - 1

findings = Table(
    "findings",
    metadata,
    Column("workflow_id", String(64), primary_key=True),
    Column("number", Integer, primary_key=True),  # 1, 2 … in the order found: the finding's id
    Column("step", Integer, nullable=False),
    Column("procedure", String(100), nullable=False),
    Column("severity", SmallInteger, nullable=False),  # index in SEVERITIES
    # -|amount| in cents: ascending is largest first, so every order is ascending and a page
    # after a key is one range of an index (row-value comparison, SQLite and PostgreSQL alike).
    Column("minus_cents", BigInteger, nullable=False),
    Column("amount", String(60), nullable=False),
    Column("entry_ids", Text, nullable=False),  # JSON list, at most MAX_ENTRY_IDS
    Column("entry_count", Integer, nullable=False),
    Column("explanation", Text, nullable=False),
)
Index("ix_findings_by_severity", findings.c.workflow_id, findings.c.severity, findings.c.minus_cents, findings.c.number)
Index("ix_findings_by_amount", findings.c.workflow_id, findings.c.minus_cents, findings.c.number)


@dataclass(frozen=True, slots=True)
class FindingRecord:
    number: int
    step: int
    procedure: str
    severity: int
    minus_cents: int
    amount: str
    entry_ids: list[str]
    entry_count: int
    explanation: str

    @classmethod
    def from_row(cls, row: Any) -> FindingRecord:
        m = row._mapping
        return cls(
            m["number"],
            m["step"],
            m["procedure"],
            m["severity"],
            m["minus_cents"],
            m["amount"],
            json.loads(m["entry_ids"]),
            m["entry_count"],
            m["explanation"],
        )

    def message(self) -> pb.Finding:
        return pb.Finding(
            finding_id=f"f{self.number}",
            step=self.step,
            procedure=self.procedure,
            severity=SEVERITIES[self.severity],
            entry_ids=self.entry_ids,
            entry_count=self.entry_count,
            amount=self.amount,
            explanation=self.explanation,
        )


# --- storing --------------------------------------------------------------------------------


def normalize(raw: Any, step: int, procedure: str) -> dict[str, Any]:
    """A finding as handed over, checked and bounded for the table (ValueError says what is
    wrong: the procedure's bug, which fails the cycle)."""
    if not isinstance(raw, dict):
        raise ValueError(f"a finding must be a JSON object, not {type(raw).__name__}")
    severity = raw.get("severity")
    if severity not in SEVERITIES:
        raise ValueError(f"a finding's severity must be high, medium or low, not {severity!r}")
    try:
        amount = Decimal(str(raw.get("amount", "0")))
    except InvalidOperation:
        raise ValueError(f"a finding's amount must be a decimal number, not {raw.get('amount')!r}") from None
    if not amount.is_finite():
        raise ValueError("a finding's amount must be a finite number")
    ids = raw.get("entry_ids") or []
    if not isinstance(ids, list):
        raise ValueError("a finding's entry_ids must be a list")
    explanation = str(raw.get("explanation", ""))
    if len(explanation) > MAX_EXPLANATION:
        explanation = explanation[: MAX_EXPLANATION - 1] + "…"
    return {
        "step": step,
        "procedure": str(raw.get("procedure") or procedure)[:100],
        "severity": SEVERITIES.index(severity),
        "minus_cents": -min(INT64, int(abs(amount) * 100)),
        "amount": str(amount)[:60],
        "entry_ids": json.dumps([str(i)[:200] for i in ids[:MAX_ENTRY_IDS]]),
        "entry_count": len(ids),
        "explanation": explanation,
    }


def add(conn: Connection, workflow_id: str, first: int, values: Sequence[dict[str, Any]]) -> None:
    """Store a cycle's findings, numbered from `first` (in the checkpoint's transaction)."""
    if values:
        rows = [{"workflow_id": workflow_id, "number": first + i, **v} for i, v in enumerate(values)]
        conn.execute(insert(findings), rows)


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A checked ListFindings filter and order."""

    workflow_id: str
    steps: tuple[int, ...] = ()
    procedures: tuple[str, ...] = ()
    severities: tuple[int, ...] = ()
    order: str = "severity"

    @classmethod
    def of(cls, workflow_id: str, message: pb.FindingsFilter) -> Query:
        """INVALID_ARGUMENT naming the field for a filter that cannot be asked."""
        check_filter(message)
        order = message.order or "severity"
        severities = tuple(sorted({SEVERITIES.index(s) for s in message.severities}))
        return cls(
            workflow_id, tuple(sorted(set(message.steps))), tuple(sorted(set(message.procedures))), severities, order
        )

    def fingerprint(self) -> str:
        """Ties a page token to its filter and order."""
        text = json.dumps([self.workflow_id, self.steps, self.procedures, self.severities, self.order])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def where(self) -> ColumnElement[bool]:
        c = findings.c
        conditions = [c.workflow_id == self.workflow_id]
        if self.steps:
            conditions.append(c.step.in_(self.steps))
        if self.procedures:
            conditions.append(c.procedure.in_(self.procedures))
        if self.severities:
            conditions.append(c.severity.in_(self.severities))
        return and_(*conditions)


@dataclass(frozen=True)
class Cursor:
    """Where a page ended, and the total counted on the first page."""

    key: tuple[int, ...]
    total: int


ORDER_COLUMNS = {
    "severity": ("severity", "minus_cents", "number"),
    "amount": ("minus_cents", "number"),
    "found": ("number",),
}


def page(conn: Connection, query: Query, after: Cursor | None, limit: int) -> tuple[list[FindingRecord], int]:
    """Up to `limit` findings after the cursor, in the query's order, and the total."""
    columns = [findings.c[name] for name in ORDER_COLUMNS[query.order]]
    statement = select(findings).where(query.where()).order_by(*columns).limit(limit)
    if after is not None:
        statement = statement.where(tuple_(*columns) > tuple_(*after.key))
        total = after.total
    else:
        total = int(conn.execute(select(func.count()).select_from(findings).where(query.where())).scalar_one())
    return [FindingRecord.from_row(row) for row in conn.execute(statement)], total


def key_of(order: str, record: FindingRecord) -> tuple[int, ...]:
    return tuple(getattr(record, name) for name in ORDER_COLUMNS[order])


MAX_PAGE_BYTES = 2 << 20  # a page stays well under a gRPC message's 4 MiB


@dataclass(frozen=True, slots=True)
class Listed:
    record: FindingRecord
    message: pb.Finding


def fitting(records: list[FindingRecord], size: int) -> tuple[list[Listed], bool]:
    """The first `size` records as messages, fewer if they would pass `MAX_PAGE_BYTES` (at
    least one: a finding is bounded far below it), and whether more follow."""
    kept: list[Listed] = []
    total = 0
    for record in records[:size]:
        message = record.message()
        total += message.ByteSize()
        if kept and total > MAX_PAGE_BYTES:
            return kept, True
        kept.append(Listed(record, message))
    return kept, len(records) > size


def token(query: Query, cursor: Cursor) -> str:
    data = {"q": query.fingerprint(), "k": list(cursor.key), "t": cursor.total}
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


MAX_TOKEN = 1024  # characters of a page token (ours are under 200)


def cursor_of(query: Query, text: str) -> Cursor:
    """The cursor of a page token given with this very filter and order; INVALID_ARGUMENT else.
    A token is the caller's to tamper with: anything but our own shape (a huge number, JSON
    nested deep enough to exhaust the parser's recursion, a float) is refused here, before
    the database sees it."""
    message = "not a token of this workflow, filter and order: start from the first page"
    if len(text) > MAX_TOKEN:
        raise invalid("page_token", message)
    try:
        data = json.loads(base64.urlsafe_b64decode(text.encode()))
        key = tuple(_int64(k) for k in data["k"])
        if data["q"] != query.fingerprint() or len(key) != len(ORDER_COLUMNS[query.order]):
            raise ValueError("another filter")
        return Cursor(key, _int64(data["t"]))
    except (ValueError, KeyError, TypeError, RecursionError, binascii.Error) as exc:
        raise invalid("page_token", message) from exc


def _int64(value: object) -> int:
    if type(value) is not int or not -INT64 - 1 <= value <= INT64:  # (what the database compares)
        raise ValueError("not a 64-bit integer")
    return value

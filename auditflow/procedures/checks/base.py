"""What every built-in audit procedure shares: findings, parameter checks and the chunk driver.

A procedure module gives a `scan` (the findings of one chunk of the ledger, and its own
running totals), a `finish` (findings only the whole can show, and the summary's own fields)
and its parameters; `audit_procedure` turns them into a chunked, validated procedure and
registers it. The driver owns everything else: the cut into chunks, the state the processor
checkpoints (the same JSON whatever the procedure), the counters and the first findings in
order, and the step's summary.
"""

from __future__ import annotations

import copy
import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, TypedDict, TypeVar, cast

from auditflow.errors import FieldViolation
from auditflow.procedures import Chunk, ChunkFn, CriticalError, register_chunked
from auditflow.procedures.table import Ledger, check_source, money, open_ledger

SEVERITIES = ("high", "medium", "low")
DEFAULT_CHUNK_ROWS = 250_000
MAX_CHUNK_ROWS = 1_000_000  # what one call may read: bounds a cycle's memory and time
TOP = 5  # findings a step's summary shows

# A step's parameters as the plan gives them: JSON, checked by the procedure's `validate`.
Parameters = Mapping[str, Any]
# A row of a DuckDB query: its columns are those the query selects.
Row = tuple[Any, ...]


# --- findings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One thing an auditor should look at: the entries, the amount at stake, what to do."""

    procedure: str
    severity: str
    entry_ids: list[str]
    cents: int
    explanation: str

    def rank(self) -> tuple[int, int, list[str]]:
        """The order an auditor reads findings in: high first, then by amount at stake."""
        return (SEVERITIES.index(self.severity), -abs(self.cents), self.entry_ids)

    def to_json(self) -> dict[str, object]:
        return {
            "procedure": self.procedure,
            "severity": self.severity,
            "entry_ids": self.entry_ids,
            "amount": money(self.cents),
            "explanation": self.explanation,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Finding:
        cents = int(Decimal(str(data["amount"])) * 100)
        entry_ids = [str(entry) for entry in data["entry_ids"]]
        return cls(str(data["procedure"]), str(data["severity"]), entry_ids, cents, str(data["explanation"]))


def order(finding: Mapping[str, Any]) -> tuple[int, int, list[str]]:
    """A finding's JSON in the order an auditor reads them (`Finding.rank`)."""
    return Finding.from_json(finding).rank()


# --- the state a step checkpoints -------------------------------------------------------------


@dataclass
class Tally:
    """The step's findings so far, counted: the summary's totals and its `TOP` first findings
    (every finding is stored by the processor, never kept here), and the procedure's own
    running totals (`own`: JSON, its shape the procedure's)."""

    count: int = 0
    stake: int = 0  # cents
    by_severity: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEVERITIES, 0))
    top: list[Finding] = field(default_factory=list)
    own: dict[str, object] = field(default_factory=dict)

    def add(self, findings: list[Finding]) -> None:
        if not findings:
            return
        self.count += len(findings)
        self.stake += sum(abs(f.cents) for f in findings)
        for severity, n in Counter(f.severity for f in findings).items():
            self.by_severity[severity] += n
        first = heapq.nsmallest(TOP, findings, key=Finding.rank)
        self.top = sorted([*self.top, *first], key=Finding.rank)[:TOP]

    def to_json(self) -> dict[str, object]:
        return {
            "top": [f.to_json() for f in self.top],
            "count": self.count,
            "stake": self.stake,
            "by_severity": self.by_severity,
            "extra": self.own,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tally:
        """A copy: the caller's checkpoint stays as it was."""
        top = [Finding.from_json(f) for f in data["top"]]
        own = copy.deepcopy(data["extra"])
        return cls(int(data["count"]), int(data["stake"]), dict(data["by_severity"]), top, own)


@dataclass
class Progress:
    """A step's checkpoint: the next chunk, what the ledger looked like, the tally."""

    chunk: int
    chunks: int
    entries: int
    tally: Tally

    def to_json(self) -> dict[str, object]:
        return {"chunk": self.chunk, "chunks": self.chunks, "entries": self.entries, "acc": self.tally.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Progress:
        return cls(int(data["chunk"]), data.get("chunks", -1), data.get("entries", -1), Tally.from_json(data["acc"]))


# --- parameter checks --------------------------------------------------------------------------

Check = Callable[[object], bool]
Relations = Callable[[Parameters], Iterator[FieldViolation]]
Validate = Callable[[dict[str, Any]], Iterator[FieldViolation]]


def number(low: float, high: float, *, whole: bool = False) -> Check:
    """A check for a JSON number in [low, high] (a whole one if `whole`); never a boolean."""

    def check(value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        return (not whole or value == int(value)) and low <= value <= high

    return check


def one_of(*choices: object) -> Check:
    """A check for one of a few JSON values (never a boolean standing for 1)."""
    return lambda value: not isinstance(value, bool) and value in choices


WHOLE_DAYS = (number(0, 366, whole=True), "a whole number of days between 0 and 366")
AMOUNT = (number(0, 1e12), "an amount of at least 0")
POSITIVE_AMOUNT = (number(0.01, 1e12), "an amount of at least 0.01")


def validator(relations: Relations | None = None, **checks: tuple[Check, str]) -> Validate:
    """A `validate` for a procedure: each named parameter (all optional), how they relate to
    each other (`relations`, once each is valid), then the ledger source."""
    allowed = {"path", "url", "source", "table", "chunk_rows", *checks}
    every = {
        "chunk_rows": (number(1, MAX_CHUNK_ROWS, whole=True), f"a whole number of rows, 1 to {MAX_CHUNK_ROWS}"),
        **checks,
    }

    def validate(parameters: dict[str, Any]) -> Iterator[FieldViolation]:
        unknown = set(parameters) - allowed - {"max_findings"}
        if "max_findings" in parameters:
            yield FieldViolation(
                "parameters.max_findings",
                "not a parameter any more: every finding is stored; page them with ListFindings "
                "(auditflow findings WORKFLOW_ID) or export them",
            )
        bad = [
            FieldViolation(f"parameters.{name}", expected)
            for name, (check, expected) in every.items()
            if name in parameters and not check(parameters[name])
        ]
        yield from bad
        if relations is not None and not bad:
            yield from relations(parameters)
        if unknown:
            yield FieldViolation("parameters", f"unknown parameters: {', '.join(sorted(unknown))}")
        yield from check_source(parameters)

    return validate


def cents(parameters: Parameters, name: str, default: float) -> int:
    """An amount parameter in whole cents, rounded half to even as the ledger's amounts are."""
    return int((Decimal(str(parameters.get(name, default))) * 100).to_integral_value())


# --- reading the ledger ------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """The rows of one chunk: an SQL condition on the ledger table, and its arguments."""

    where: str
    args: list[object]


def fetch(ledger: Ledger, sql: str, args: list[object] | None = None) -> list[Row]:
    """Every row of a query on the ledger table, on a cursor of its own (one per thread)."""
    return ledger.cursor().execute(sql, args).fetchall()


# --- the chunk driver --------------------------------------------------------------------------

P = TypeVar("P")  # a procedure's parameters, read once per call
T = TypeVar("T", bound=Mapping[str, object])  # its running totals: a TypedDict of JSON values
# scan(ledger, parameters, rows, own) -> the findings of one chunk; `own` is the procedure's
# running totals, which it updates.
Scan = Callable[[Ledger, P, Rows, T], list[Finding]]
# finish(ledger, parameters, own) -> (the findings found only at the end, the summary's own fields)
Finish = Callable[[Ledger, P, T], tuple[list[Finding], dict[str, object]]]


class NoTotals(TypedDict):
    """The running totals of a procedure that keeps none."""


@dataclass(frozen=True)
class AuditProcedure(Generic[P, T]):
    """A chunked audit procedure made of a per-chunk `scan` and a final `finish`."""

    read: Callable[[Parameters], P]  # the parameters, with their defaults
    scan: Scan[P, T]
    finish: Finish[P, T]
    key: Callable[[P], str] = lambda rule: "vendor"  # the column the ledger is cut by, or "account"

    def chunk(self, parameters: dict[str, Any], state: dict[str, Any] | None) -> Chunk:
        ledger = open_ledger(parameters)
        rule = self.read(parameters)
        column = self.key(rule)
        chunk_rows = int(parameters.get("chunk_rows", DEFAULT_CHUNK_ROWS))
        bounds = ledger.chunks(column, chunk_rows)
        if state is None:
            progress = Progress(0, len(bounds), ledger.rows, Tally())
        else:
            progress = Progress.from_json(state)
            if (progress.chunks, progress.entries) != (len(bounds), ledger.rows):
                raise CriticalError(f"{ledger.label}: the ledger changed while the step ran; run it again")
        tally = progress.tally
        found: list[Finding] = []
        read = 0
        if progress.chunk < len(bounds):
            low, high = bounds[progress.chunk]
            found = self.scan(ledger, rule, Rows(f"{column} BETWEEN ? AND ?", [low, high]), cast(T, tally.own))
            read = ledger.chunk_sizes(column, chunk_rows)[progress.chunk]
            tally.add(found)
            progress.chunk += 1
        if progress.chunk < len(bounds):
            return Chunk(progress.to_json(), progress.chunk, len(bounds), findings=_json(found), rows=read)
        last, own_summary = self.finish(ledger, rule, cast(T, tally.own))
        tally.add(last)
        summary = {
            "entries": ledger.rows,
            "findings": tally.count,
            "by_severity": tally.by_severity,
            "amount_at_stake": money(tally.stake),
            "top": [f.to_json() for f in tally.top],
            **own_summary,
        }
        result: dict[str, object] = {"summary": summary}
        return Chunk(progress.to_json(), progress.chunk, len(bounds), result, _json([*found, *last]), read)


def _json(findings: list[Finding]) -> list[dict[str, object]]:
    return [f.to_json() for f in findings]


def audit_procedure(
    name: str,
    doc: str,
    procedure: AuditProcedure[P, T],
    *,
    relations: Relations | None = None,
    **checks: tuple[Check, str],
) -> ChunkFn:
    """Register `procedure` under `name`, described by `doc`, its parameters checked by `checks`."""

    def chunk(parameters: dict[str, Any], state: dict[str, Any] | None) -> Chunk:
        return procedure.chunk(parameters, state)

    chunk.__name__ = name
    chunk.__doc__ = doc
    return register_chunked(name, validate=validator(relations, **checks))(chunk)

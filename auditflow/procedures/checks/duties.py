"""segregation_of_duties: entries created and approved by the same person, or never approved."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import NamedTuple, TypedDict

from auditflow.procedures.checks.base import AuditProcedure, Finding, Parameters, Rows, audit_procedure, fetch
from auditflow.procedures.table import Ledger, money

NAME = "segregation_of_duties"


@dataclass(frozen=True)
class NoRule:
    """segregation_of_duties has no parameters of its own."""

    @classmethod
    def of(cls, parameters: Parameters) -> NoRule:
        return cls()


class SelfApprovals(TypedDict, total=False):
    per_person: dict[str, int]  # entries each person created and approved


class Entry(NamedTuple):
    entry_id: str
    cents: int
    vendor: str
    day: date
    creator: str
    approver: str


def scan(ledger: Ledger, rule: NoRule, rows: Rows, own: SelfApprovals) -> list[Finding]:
    found = fetch(
        ledger,
        f"""SELECT entry_id, cents, vendor, posting_date, created_by, approved_by FROM ledger
            WHERE {rows.where} AND (trim(approved_by) = '' OR lower(trim(created_by)) = lower(trim(approved_by)))
            ORDER BY row_no""",
        rows.args,
    )
    per_person = own.setdefault("per_person", {})
    findings = []
    for entry in map(Entry._make, found):
        who = entry.creator.strip()
        if not entry.approver.strip():
            severity, why = "medium", f"created by {who or 'unknown'} and never approved"
        elif who.casefold() == entry.approver.strip().casefold():
            severity, why = "high", f"created and approved by {who}"
            per_person[who] = per_person.get(who, 0) + 1
        else:
            continue
        findings.append(
            Finding(
                NAME,
                severity,
                [entry.entry_id],
                entry.cents,
                f"{money(entry.cents)} to {entry.vendor} on {entry.day} {why}: have someone else review it",
            )
        )
    return findings


def finish(ledger: Ledger, rule: NoRule, own: SelfApprovals) -> tuple[list[Finding], dict[str, object]]:
    return [], {"self_approved_by": dict(sorted(own.get("per_person", {}).items()))}


segregation_of_duties = audit_procedure(
    NAME,
    """Entries created and approved by the same person, or never approved.

    Detects: a breach of the four-eyes principle. Severity high when the creator approved
    their own entry (names compared without case or surrounding spaces), medium when the
    approver is missing.
    Ledger: path, or source and table; chunk_rows (default 250000).
    Parameters:
    Reference: COSO Internal Control - Integrated Framework (2013), principle 10 (segregation
    of duties); ISA 315 (revised 2019) appendix 3.
    """,
    AuditProcedure(NoRule.of, scan, finish),
)

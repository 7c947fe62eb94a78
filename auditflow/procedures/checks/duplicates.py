"""duplicate_payments: payments to one vendor of the same amount within a few days.

SQL selects the candidates (entries with a neighbour of the same vendor and amount, or within
the tolerance, within `days`); Python groups them greedily in amount and date order, so the
groups are those of a row-by-row pass.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from typing import NamedTuple

from auditflow.procedures.checks.base import (
    WHOLE_DAYS,
    AuditProcedure,
    Finding,
    NoTotals,
    Parameters,
    Rows,
    audit_procedure,
    fetch,
    number,
)
from auditflow.procedures.table import Ledger, money

NAME = "duplicate_payments"


@dataclass(frozen=True)
class DuplicateRule:
    days: int  # at most this many days apart
    tolerance: float  # amounts within this fraction of each other count as the same

    @classmethod
    def of(cls, parameters: Parameters) -> DuplicateRule:
        return cls(int(parameters.get("days", 7)), float(parameters.get("tolerance", 0)))


class Payment(NamedTuple):
    entry_id: str
    vendor: str
    cents: int
    day: date
    description: str


def _candidates(rule: DuplicateRule, where: str) -> str:
    """The row numbers of the entries that have a possible duplicate within the chunk."""
    if rule.tolerance == 0:  # same amount: neighbours in date order within (vendor, amount)
        return f"""SELECT row_no FROM (
                SELECT row_no, posting_date, lag(posting_date) OVER w AS prev, lead(posting_date) OVER w AS next
                FROM ledger WHERE {where} AND cents <> 0
                WINDOW w AS (PARTITION BY vendor, cents ORDER BY posting_date))
            WHERE posting_date - prev <= {rule.days} OR next - posting_date <= {rule.days}"""
    # amounts within the tolerance: a band join within the vendor
    return f"""WITH l AS (SELECT row_no, vendor, cents, posting_date FROM ledger WHERE {where} AND cents <> 0)
            SELECT unnest([a.row_no, b.row_no]) FROM l a JOIN l b ON a.vendor = b.vendor AND a.row_no <> b.row_no
                AND b.cents >= a.cents AND b.cents <= floor(a.cents + abs(a.cents) * {rule.tolerance!r})
                AND abs(a.posting_date - b.posting_date) <= {rule.days}"""


def _groups(entries: list[Payment], rule: DuplicateRule) -> list[list[Payment]]:
    """One vendor's candidates grouped greedily: each group is an entry and the unused ones
    within the tolerance above its amount and `days` of its date."""
    entries = sorted(entries, key=lambda p: (p.cents, p.day, p.entry_id))
    amounts = [p.cents for p in entries]
    used: set[int] = set()
    groups = []
    for a, first in enumerate(entries):
        if a in used:
            continue
        high = first.cents + abs(first.cents) * rule.tolerance
        group = [a]
        for b in range(a + 1, bisect_right(amounts, math.floor(high))):
            if b not in used and abs((entries[b].day - first.day).days) <= rule.days:
                group.append(b)
        if len(group) >= 2:
            used.update(group)
            groups.append([entries[k] for k in group])
    return groups


def _finding(members: list[Payment]) -> Finding:
    first = members[0]
    exact = len({m.description for m in members}) < len(members)
    same = len({m.cents for m in members}) == 1
    extra_cents = sum(m.cents for m in members[1:])
    span = (max(m.day for m in members) - min(m.day for m in members)).days
    kind = "exact duplicate (same description)" if exact else "possible duplicate"
    amount = money(first.cents) if same else f"about {money(first.cents)}"
    return Finding(
        NAME,
        "high" if exact else "medium",
        [m.entry_id for m in members],
        extra_cents,
        f"{kind}: {len(members)} payments of {amount} to {first.vendor} within {span} day(s); "
        f"check that {money(extra_cents)} was not paid twice",
    )


def scan(ledger: Ledger, rule: DuplicateRule, rows: Rows, own: NoTotals) -> list[Finding]:
    found = fetch(
        ledger,
        f"""SELECT entry_id, vendor, cents, posting_date, description FROM ledger
            WHERE row_no IN ({_candidates(rule, rows.where)}) ORDER BY row_no""",
        rows.args,
    )
    by_vendor: dict[str, list[Payment]] = defaultdict(list)
    for payment in map(Payment._make, found):
        by_vendor[payment.vendor].append(payment)
    return [_finding(group) for entries in by_vendor.values() for group in _groups(entries, rule)]


def finish(ledger: Ledger, rule: DuplicateRule, own: NoTotals) -> tuple[list[Finding], dict[str, object]]:
    return [], {"days": rule.days, "tolerance": rule.tolerance}


duplicate_payments = audit_procedure(
    NAME,
    """Payments to one vendor of the same amount within N days (exact and near-duplicates).

    Detects: two or more entries with the same vendor and amount posted at most `days` apart.
    Severity high when they also share the description (the same invoice paid twice: an exact
    duplicate), medium otherwise (a near-duplicate: same payee and amount, other reference).
    With `tolerance` > 0, amounts within that fraction of each other count as the same.
    Ledger: path, or source and table; chunk_rows (default 250000).
    Parameters: days (default 7); tolerance (default 0).
    Reference: ACFE Fraud Examiners Manual, "duplicate payments"; Nigrini (2011), Forensic
    Analytics, ch. 11 ("same-same-same" and "same-same-different" tests).
    """,
    AuditProcedure(DuplicateRule.of, scan, finish),
    days=WHOLE_DAYS,
    tolerance=(number(0, 0.5), "a fraction between 0 and 0.5 (0.01 = 1 %)"),
)

"""split_purchases: a few payments to one vendor, each close to the approval limit, close in
time, together above it.

SQL returns the near-limit payments of the vendors that have a date window of enough of them
above the limit (a superset of the greedy windows); `split_windows`, a plain function, cuts
the windows per vendor.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import NamedTuple, TypedDict

from auditflow.errors import FieldViolation
from auditflow.procedures.checks.base import (
    POSITIVE_AMOUNT,
    WHOLE_DAYS,
    AuditProcedure,
    Finding,
    Parameters,
    Rows,
    audit_procedure,
    cents,
    fetch,
    number,
)
from auditflow.procedures.table import Ledger, money

NAME = "split_purchases"
SPLIT_DEFAULTS = {"approval_limit": 10_000, "min_share": 0.7, "days": 7, "min_payments": 2, "max_payments": 5}


@dataclass(frozen=True)
class SplitRule:
    """What a split purchase looks like: `min_payments` to `max_payments` payments to one vendor,
    each at least `min_share` of the approval limit and under it, within `days` days of the
    first, together above the limit."""

    limit: int  # cents
    low: int  # cents: the smallest payment that counts
    days: int
    min_payments: int
    max_payments: int

    @classmethod
    def of(cls, parameters: Parameters) -> SplitRule:
        limit = cents(parameters, "approval_limit", SPLIT_DEFAULTS["approval_limit"])
        share = float(parameters.get("min_share", SPLIT_DEFAULTS["min_share"]))
        return cls(
            limit,
            max(1, math.ceil(limit * share)),
            int(parameters.get("days", SPLIT_DEFAULTS["days"])),
            int(parameters.get("min_payments", SPLIT_DEFAULTS["min_payments"])),
            int(parameters.get("max_payments", SPLIT_DEFAULTS["max_payments"])),
        )


class Payment(NamedTuple):
    day: date  # posting date
    cents: int
    entry_id: str


class BusyCounts(TypedDict, total=False):
    busy_windows: int  # windows of more than max_payments near-limit payments
    busy_vendors: int  # vendors with at least one


def split_windows(payments: Iterable[tuple[date, int, str]], rule: SplitRule) -> tuple[list[list[Payment]], int]:
    """The split purchases among one vendor's payments of [low, limit), and the busy windows.

    Greedy in date order, and windows never overlap: a window is every payment within `days`
    of its first; when it is a split (between min_payments and max_payments payments, together
    above the limit) or busy (more than max_payments: the vendor's ordinary flow, not one
    purchase), the next window starts after it, so a long run of payments is never chained into
    one window. Otherwise the next window starts at the next payment.
    """
    ordered = sorted(Payment(*p) for p in payments)
    dates = [p.day for p in ordered]
    windows: list[list[Payment]] = []
    busy = 0
    start = 0
    while start < len(ordered):
        end = bisect_right(dates, dates[start] + timedelta(days=rule.days))
        window = ordered[start:end]
        if len(window) > rule.max_payments:
            busy += 1
        elif len(window) >= rule.min_payments and sum(p.cents for p in window) > rule.limit:
            windows.append(window)
        else:
            start += 1
            continue
        start = end
    return windows, busy


def scan(ledger: Ledger, rule: SplitRule, rows: Rows, own: BusyCounts) -> list[Finding]:
    found = fetch(
        ledger,
        f"""WITH near AS (SELECT vendor, entry_id, cents, posting_date FROM ledger
                          WHERE {rows.where} AND cents >= {rule.low} AND cents < {rule.limit}),
            windows AS (SELECT vendor, sum(cents) OVER w AS total, count(*) OVER w AS n FROM near
                WINDOW w AS (PARTITION BY vendor ORDER BY posting_date - DATE '2000-01-01'
                             RANGE BETWEEN CURRENT ROW AND {rule.days} FOLLOWING))
            SELECT vendor, posting_date, cents, entry_id FROM near
            WHERE vendor IN (SELECT vendor FROM windows WHERE total > {rule.limit} AND n >= {rule.min_payments})""",
        rows.args,
    )
    by_vendor: dict[str, list[Payment]] = defaultdict(list)
    for vendor, day, amount, entry_id in found:
        by_vendor[vendor].append(Payment(day, amount, entry_id))
    findings = []
    for vendor, payments in sorted(by_vendor.items()):
        windows, busy = split_windows(payments, rule)
        if busy:
            own["busy_windows"] = own.get("busy_windows", 0) + busy
            own["busy_vendors"] = own.get("busy_vendors", 0) + 1
        findings += [_finding(vendor, window, rule) for window in windows]
    return findings


def _finding(vendor: str, window: list[Payment], rule: SplitRule) -> Finding:
    total = sum(p.cents for p in window)
    first, last = window[0].day, window[-1].day
    smallest, largest = min(p.cents for p in window), max(p.cents for p in window)
    return Finding(
        NAME,
        "high",
        [p.entry_id for p in window],
        total,
        f"{len(window)} payments to {vendor} within {(last - first).days} day(s) ({first} to {last}), "
        f"each {money(smallest)} to {money(largest)}: at least {money(rule.low)} and under the approval "
        f"limit of {money(rule.limit)}, together {money(total)}: check for one purchase split to avoid approval",
    )


def finish(ledger: Ledger, rule: SplitRule, own: BusyCounts) -> tuple[list[Finding], dict[str, object]]:
    return [], {
        "approval_limit": money(rule.limit),
        "min_payment": money(rule.low),
        "days": rule.days,
        "payments": [rule.min_payments, rule.max_payments],
        "busy_windows": own.get("busy_windows", 0),
        "busy_vendors": own.get("busy_vendors", 0),
    }


def relations(parameters: Parameters) -> Iterator[FieldViolation]:
    low, high = (parameters.get(k, SPLIT_DEFAULTS[k]) for k in ("min_payments", "max_payments"))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) and high < low:
        yield FieldViolation("parameters.max_payments", f"at least min_payments ({low})")


PAYMENTS = (number(2, 1000, whole=True), "a whole number between 2 and 1000")

split_purchases = audit_procedure(
    NAME,
    """A few payments to one vendor, each close to the approval limit, close in time, together above it.

    Detects: a purchase split into pieces so that none needs the approval the whole would.
    The pieces of a real split are few, each just under the limit, and close together; a busy
    vendor's ordinary payments are many and mostly small. So a split is `min_payments` (2) to
    `max_payments` (5) payments to one vendor, each at least `min_share` (0.7) of
    `approval_limit` and under it, all within `days` (7) days of the first, together above
    the limit. Windows are cut greedily in date order and never overlap or chain (see
    `split_windows`); a window with more than `max_payments` such payments is a vendor's
    ordinary flow, not one purchase: it is counted in the summary (busy_windows, busy_vendors),
    not reported. Each split found is one finding (high), its amount the total paid.
    Ledger: path, or source and table; chunk_rows (default 250000).
    Parameters: approval_limit (default 10000); min_share (0.7); days (7); min_payments (2);
    max_payments (5).
    Reference: ACFE Fraud Examiners Manual, "purchasing schemes: split purchases"; Nigrini
    (2011), Forensic Analytics, ch. 11.
    """,
    AuditProcedure(SplitRule.of, scan, finish),
    relations=relations,
    approval_limit=POSITIVE_AMOUNT,
    min_share=(number(0, 0.99), "a fraction of the approval limit between 0 and 0.99"),
    days=WHOLE_DAYS,
    min_payments=PAYMENTS,
    max_payments=PAYMENTS,
)

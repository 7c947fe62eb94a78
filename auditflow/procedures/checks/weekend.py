"""weekend_postings: entries posted on a Saturday, a Sunday or a listed holiday."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TypedDict

from auditflow.procedures.checks.base import AuditProcedure, Finding, Parameters, Rows, audit_procedure, fetch
from auditflow.procedures.table import Ledger, money

NAME = "weekend_postings"
MAX_HOLIDAYS = 10_000


@dataclass(frozen=True)
class WeekendRule:
    holidays: list[date]  # sorted, each once
    listed: int  # the distinct holidays the parameters list, as written

    @classmethod
    def of(cls, parameters: Parameters) -> WeekendRule:
        given = parameters.get("holidays", [])
        return cls(sorted({date.fromisoformat(d) for d in given}), len(set(given)))


class DayCounts(TypedDict, total=False):
    weekend: int  # entries posted on a weekend
    holiday: int  # entries posted on a listed holiday


def is_date_list(value: object) -> bool:
    if not isinstance(value, list) or len(value) > MAX_HOLIDAYS:
        return False
    try:
        for item in value:
            date.fromisoformat(item)
    except (TypeError, ValueError):
        return False
    return True


def scan(ledger: Ledger, rule: WeekendRule, rows: Rows, own: DayCounts) -> list[Finding]:
    found = fetch(
        ledger,
        f"""SELECT entry_id, cents, vendor, posting_date, created_by,
                list_contains(CAST(? AS DATE[]), posting_date) AS holiday
            FROM ledger WHERE {rows.where}
                AND (isodow(posting_date) >= 6 OR list_contains(CAST(? AS DATE[]), posting_date))
            ORDER BY row_no""",
        [rule.holidays, *rows.args, rule.holidays],
    )
    findings = []
    for entry_id, amount, vendor, day, created_by, holiday in found:
        if holiday:
            own["holiday"] = own.get("holiday", 0) + 1
            severity, why = "medium", "a holiday"
        else:
            own["weekend"] = own.get("weekend", 0) + 1
            severity, why = "low", f"a {day.strftime('%A')}"
        findings.append(
            Finding(
                NAME,
                severity,
                [entry_id],
                amount,
                f"posted on {why} ({day}) by {created_by or 'unknown'}: "
                f"{money(amount)} to {vendor}; confirm it was authorised",
            )
        )
    return findings


def finish(ledger: Ledger, rule: WeekendRule, own: DayCounts) -> tuple[list[Finding], dict[str, object]]:
    return [], {"weekend": own.get("weekend", 0), "holiday": own.get("holiday", 0), "holidays_listed": rule.listed}


weekend_postings = audit_procedure(
    NAME,
    """Entries posted on a Saturday, a Sunday or a listed holiday.

    Detects: postings on days the business is closed, when nobody should be booking. Severity
    medium on a holiday, low on a weekend.
    Ledger: path, or source and table; chunk_rows (default 250000).
    Parameters: holidays (list of ISO dates, default none).
    Reference: ISA 240 A44 and PCAOB AS 2401.61 (entries "made at unusual times"); Nigrini
    (2011), Forensic Analytics, ch. 13 (journal entry tests).
    """,
    AuditProcedure(WeekendRule.of, scan, finish),
    holidays=(is_date_list, "a list of ISO dates (YYYY-MM-DD)"),
)

"""Built-in summaries of a ledger: totals per account and month, and the vendors paid most.

Both read the ledger through the cached DuckDB table of `auditflow.procedures.table` (a CSV or
Parquet file, or a SQL table: the sources the audit procedures accept), and each is one
grouped query over it, so a plan reads the ledger once for all its steps. They are not
chunked: after the read, which a chunk could not split either, the query takes a fraction of
a second even at a million entries (docs/procedures.md).

Totals are exact decimal strings: the amounts are summed as DECIMAL(38, 6), and each total is
printed with as many decimals as the most precise amount it adds up ('300' + '0.5' is
'300.5'; '100.10' + '-20.05' is '80.05'), as a sum of Python Decimals would be.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Context, Decimal
from typing import Any

from auditflow.errors import FieldViolation
from auditflow.procedures import register
from auditflow.procedures.table import check_source, open_ledger

SOURCE = frozenset({"path", "url", "table"})
EXACT = Context(prec=80)  # DECIMAL(38, 6) sums fit: quantize never rounds them


def validate_ledger(parameters: dict[str, Any], allowed: frozenset[str] = frozenset()) -> Iterator[FieldViolation]:
    """The ledger source (as for every procedure), then no parameter but `allowed`."""
    unknown = set(parameters) - SOURCE - allowed
    if unknown:
        yield FieldViolation("parameters", f"unknown parameters: {', '.join(sorted(unknown))}")
    yield from check_source(parameters)


def validate_vendor_totals(parameters: dict[str, Any]) -> Iterator[FieldViolation]:
    yield from validate_ledger(parameters, frozenset({"top"}))
    top = parameters.get("top", 10)
    if isinstance(top, bool) or not isinstance(top, int | float) or top != int(top) or not 1 <= top <= 1000:
        yield FieldViolation("parameters.top", "a whole number between 1 and 1000")


def decimal_text(total: Decimal | None, scale: int | None) -> str:
    """An exact sum as the ledger writes amounts: `scale` decimals ('300', '80.05'), never '-0'."""
    value = (total or Decimal(0)).quantize(Decimal(1).scaleb(-(scale or 0)), context=EXACT)
    return str(value if value else abs(value))


@register("ledger_summary", validate=validate_ledger)
def ledger_summary(parameters: dict[str, Any]) -> dict[str, Any]:
    """Rows, total, and totals per account and per month of a ledger."""
    ledger = open_ledger(parameters)
    rows = (
        ledger.cursor()
        .execute(
            """SELECT account, strftime(posting_date, '%Y-%m') AS month, GROUPING(account, month) AS level,
                      count(*), sum(amount), max(scale)
               FROM ledger GROUP BY GROUPING SETS ((account), (month), ())"""
        )
        .fetchall()
    )
    per_account: dict[str, str] = {}
    per_month: dict[str, str] = {}
    count, total = 0, "0"
    for account, month, level, n, amount, scale in rows:
        if level == 1:  # grouped by account (month rolled up)
            per_account[account] = decimal_text(amount, scale)
        elif level == 2:  # grouped by month
            per_month[month] = decimal_text(amount, scale)
        else:
            count, total = int(n), decimal_text(amount, scale)
    return {
        "rows": count,
        "total": total,
        "per_account": dict(sorted(per_account.items())),
        "per_month": dict(sorted(per_month.items())),
    }


@register("vendor_totals", validate=validate_vendor_totals)
def vendor_totals(parameters: dict[str, Any]) -> dict[str, Any]:
    """The vendors paid most: total, entries and share of the whole, top N."""
    ledger = open_ledger(parameters)
    top = int(parameters.get("top", 10))
    cursor = ledger.cursor()
    vendors, grand = cursor.execute(
        "SELECT count(DISTINCT vendor), coalesce(sum(amount), 0) FROM ledger"
    ).fetchone() or (0, Decimal(0))
    ranked = cursor.execute(
        """SELECT vendor, sum(amount) AS total, max(scale), count(*) FROM ledger
           GROUP BY vendor ORDER BY total DESC, vendor LIMIT ?""",
        [top],
    ).fetchall()
    return {
        "vendors": int(vendors),
        "top": [
            {
                "vendor": vendor,
                "total": decimal_text(total, scale),
                "entries": int(entries),
                "share": float(round(total / grand, 4)) if grand else 0.0,
            }
            for vendor, total, scale, entries in ranked
        ],
    }

"""Built-in summaries of a ledger: totals per account and month, and the vendors paid most.

Both read the ledger through the cached DuckDB table of `auditflow.procedures.table` (a CSV or
Parquet file, or a SQL table: the sources the audit procedures accept), and each is one
grouped query over it, so a plan reads the ledger once for all its steps. A CSV with only the
columns a summary reads (SUMMARY_COLUMNS, VENDOR_COLUMNS) is still accepted, read on its own. They are not
chunked: after the read, which a chunk could not split either, the query takes a fraction of
a second even at a million entries (docs/procedures.md).

Totals are exact decimal strings: the amounts are summed as DECIMAL(38, 6), and each total is
printed with as many decimals as the most precise amount it adds up ('300' + '0.5' is
'300.5'; '100.10' + '-20.05' is '80.05'), as a sum of Python Decimals would be.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import duckdb

from auditflow import sources
from auditflow.errors import FieldViolation
from auditflow.fingerprints import VERIFIER, Mismatch
from auditflow.procedures import CriticalError, SourceChanged, register
from auditflow.procedures.table import (
    COLUMNS,
    DUCKDB_MEMORY,
    DUCKDB_THREADS,
    approved_source,
    check_source,
    open_ledger,
    verified,
    written_decimals,
)

SOURCE = frozenset({"path", "url", "source", "table"})
SUMMARY_COLUMNS = ("entry_id", "posting_date", "account", "amount")  # all that ledger_summary reads
VENDOR_COLUMNS = (*SUMMARY_COLUMNS, "vendor")
EXACT = Context(prec=80)  # DECIMAL(38, 6) sums fit: quantize never rounds them
MISSING = "missing columns: "


def own_columns(violations: Iterable[FieldViolation], needed: tuple[str, ...]) -> Iterator[FieldViolation]:
    """`check_source`'s violations, with its missing columns cut down to those a summary reads:
    a CSV with only those columns is summarised as before (see `_partial_csv`)."""
    for violation in violations:
        head, found, listed = violation.description.rpartition(MISSING)
        if not found:
            yield violation
            continue
        missing = [column for column in listed.split(", ") if column in needed]
        if missing:
            yield FieldViolation(violation.field, f"{head}{MISSING}{', '.join(missing)}")


def validate_ledger(
    parameters: dict[str, Any], allowed: frozenset[str] = frozenset(), needed: tuple[str, ...] = SUMMARY_COLUMNS
) -> Iterator[FieldViolation]:
    """The ledger source (checked as for every procedure), then no parameter but `allowed`."""
    unknown = set(parameters) - SOURCE - allowed
    if unknown:
        yield FieldViolation("parameters", f"unknown parameters: {', '.join(sorted(unknown))}")
    yield from own_columns(check_source(parameters), needed)


def validate_vendor_totals(parameters: dict[str, Any]) -> Iterator[FieldViolation]:
    yield from validate_ledger(parameters, frozenset({"top"}), VENDOR_COLUMNS)
    top = parameters.get("top", 10)
    if isinstance(top, bool) or not isinstance(top, int | float) or top != int(top) or not 1 <= top <= 1000:
        yield FieldViolation("parameters.top", "a whole number between 1 and 1000")


def decimal_text(total: Decimal | None, scale: int | None) -> str:
    """An exact sum as the ledger writes amounts: `scale` decimals ('300', '80.05'), never '-0'."""
    value = (total or Decimal(0)).quantize(Decimal(1).scaleb(-(scale or 0)), context=EXACT)
    return str(value if value else abs(value))


def _cursor(parameters: dict[str, Any], needed: tuple[str, ...]) -> duckdb.DuckDBPyConnection:
    """A cursor on a table `ledger` with (at least) the columns a summary reads: the cached
    ledger, or a CSV that has only the summary's own columns, read on its own."""
    try:
        return open_ledger(parameters).cursor()
    except SourceChanged:
        raise
    except CriticalError:
        path = _confined(parameters)
        names = _csv_names(path) if path is not None and path.suffix.lower() == ".csv" else []
        if path is None or not names or set(COLUMNS) <= set(names):
            raise
    missing = [column for column in needed if column not in names]
    if missing:
        raise CriticalError(f"{sources.current().shown(path)}: {MISSING}{', '.join(missing)}")
    approved = approved_source(str(parameters["path"]))
    if approved is None:
        return _partial_csv(path, names)
    checked = verified(path, approved)
    con = _partial_csv(path, names)
    try:
        VERIFIER.unchanged(path, approved, checked)
    except Mismatch as exc:
        con.close()
        raise SourceChanged(str(exc)) from None
    return con


def _confined(parameters: dict[str, Any]) -> Path | None:
    """The ledger file the parameters name, under the data roots (None if none may be read:
    the error of `open_ledger` then stands)."""
    given = parameters.get("path")
    if not isinstance(given, str) or not given:
        return None
    try:
        return sources.current().file(given)
    except sources.Refused:
        return None


def _csv_names(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return [name.strip().lstrip("\ufeff") for name in header]


def _partial_csv(path: Path, names: list[str]) -> duckdb.DuckDBPyConnection:
    """Read a CSV that lacks columns the summaries do not need (as they always accepted), with
    the ledger table's conversions; not cached, as no audit procedure can read it."""
    con = duckdb.connect(":memory:", config={"threads": DUCKDB_THREADS, "memory_limit": DUCKDB_MEMORY})
    try:
        con.execute(
            "CREATE TABLE raw AS SELECT row_number() OVER () AS row_no, * FROM read_csv(?, header = true, "
            "all_varchar = true, delim = ',', quote = '\"', escape = '\"', strict_mode = true, "
            "encoding = 'utf-8', auto_detect = false, columns = ?)",
            [str(path), {n: "VARCHAR" for n in names}],
        )
        vendor = "coalesce(nullif(vendor, ''), '(none)')" if "vendor" in names else "'(none)'"
        con.execute(
            f"""CREATE TABLE ledger AS SELECT row_no, coalesce(account, '') AS account, {vendor} AS vendor,
                    TRY_CAST(trim(posting_date) AS DATE) AS posting_date,
                    TRY_CAST(trim(amount) AS DECIMAL(38, 6)) AS amount,
                    {written_decimals("coalesce(amount, '')")} AS scale
                FROM raw"""
        )
        bad = con.execute(
            """SELECT row_no, r.amount, r.posting_date, l.amount IS NULL FROM ledger l JOIN raw r USING (row_no)
               WHERE l.amount IS NULL OR l.posting_date IS NULL ORDER BY row_no LIMIT 1"""
        ).fetchone()
    except duckdb.Error as exc:
        con.close()
        shown = sources.current().shown(path)
        problem = str(exc).strip().splitlines()[0].replace(str(path), shown)
        raise CriticalError(f"{shown}: cannot read the ledger: {problem}") from exc
    if bad is not None:
        con.close()
        row_no, amount, posting_date, bad_amount = bad
        where = f"{sources.current().shown(path)}:{row_no + 1}"
        if bad_amount:
            raise CriticalError(f"{where}: amount {amount!r} is not a number")
        raise CriticalError(f"{where}: posting_date {posting_date!r} is not an ISO date (YYYY-MM-DD)")
    return con


@register("ledger_summary", validate=validate_ledger)
def ledger_summary(parameters: dict[str, Any]) -> dict[str, Any]:
    """Rows, total, and totals per account and per month of a ledger."""
    with _cursor(parameters, SUMMARY_COLUMNS) as cursor:
        rows = cursor.execute(
            """SELECT account, strftime(posting_date, '%Y-%m') AS month, GROUPING(account, month) AS level,
                      count(*), sum(amount), max(scale)
               FROM ledger GROUP BY GROUPING SETS ((account), (month), ())"""
        ).fetchall()
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
    top = int(parameters.get("top", 10))
    with _cursor(parameters, VENDOR_COLUMNS) as cursor:
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

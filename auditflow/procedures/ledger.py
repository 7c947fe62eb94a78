"""Built-in procedures over a CSV ledger of journal entries."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from auditflow import sources
from auditflow.errors import FieldViolation
from auditflow.procedures import CriticalError, register

REQUIRED_COLUMNS = ("entry_id", "posting_date", "account", "amount")


def validate_ledger_path(parameters: dict[str, Any], allowed: frozenset[str] = frozenset()) -> Iterator[FieldViolation]:
    path = parameters.get("path")
    if not isinstance(path, str) or not path:
        yield FieldViolation("parameters.path", "required: the path of a CSV ledger under a data root")
        return
    try:
        sources.current().file(path)
    except sources.Refused as exc:
        yield FieldViolation("parameters.path", str(exc))
    unknown = set(parameters) - {"path"} - allowed
    if unknown:
        yield FieldViolation("parameters", f"unknown parameters: {', '.join(sorted(unknown))}")


def validate_vendor_totals(parameters: dict[str, Any]) -> Iterator[FieldViolation]:
    yield from validate_ledger_path(parameters, frozenset({"top"}))
    top = parameters.get("top", 10)
    if not isinstance(top, int | float) or top != int(top) or not 1 <= top <= 1000:
        yield FieldViolation("parameters.top", "a whole number between 1 and 1000")


@register("ledger_summary", validate=validate_ledger_path)
def ledger_summary(parameters: dict[str, Any]) -> dict[str, Any]:
    """Rows, total, and totals per account and per month of a CSV ledger."""
    path = _file(parameters)
    per_account: dict[str, Decimal] = defaultdict(Decimal)
    per_month: dict[str, Decimal] = defaultdict(Decimal)
    total = Decimal(0)
    rows = 0
    for line, row in _read_rows(path):
        amount = _amount(row["amount"], path, line)
        month = _month(row["posting_date"], path, line)
        per_account[row["account"]] += amount
        per_month[month] += amount
        total += amount
        rows += 1
    return {
        "rows": rows,
        "total": str(total),
        "per_account": {k: str(v) for k, v in sorted(per_account.items())},
        "per_month": {k: str(v) for k, v in sorted(per_month.items())},
    }


@register("vendor_totals", validate=validate_vendor_totals)
def vendor_totals(parameters: dict[str, Any]) -> dict[str, Any]:
    """The vendors paid most in a CSV ledger: total, entries and share of the whole, top N."""
    path = _file(parameters)
    top = int(parameters.get("top", 10))
    totals: dict[str, Decimal] = defaultdict(Decimal)
    counts: dict[str, int] = defaultdict(int)
    for line, row in _read_rows(path, ("vendor",)):
        vendor = row["vendor"] or "(none)"
        totals[vendor] += _amount(row["amount"], path, line)
        counts[vendor] += 1
    grand = sum(totals.values(), Decimal(0))
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:top]
    return {
        "vendors": len(totals),
        "top": [
            {
                "vendor": vendor,
                "total": str(total),
                "entries": counts[vendor],
                "share": float(round(total / grand, 4)) if grand else 0.0,
            }
            for vendor, total in ranked
        ],
    }


def _file(parameters: dict[str, Any]) -> Path:
    try:
        return sources.current().file(str(parameters["path"]))
    except sources.Refused as exc:
        raise CriticalError(f"cannot read the ledger: {exc}") from exc


def _read_rows(path: Path, extra: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in (*REQUIRED_COLUMNS, *extra) if c not in (reader.fieldnames or [])]
            if missing:
                raise CriticalError(f"{path}: missing columns: {', '.join(missing)}")
            for row in reader:
                yield reader.line_num, row
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CriticalError(f"{path}: cannot read the ledger: {exc}") from exc


def _amount(text: str, path: Path, line: int) -> Decimal:
    try:
        return Decimal(text)
    except (InvalidOperation, TypeError) as exc:
        raise CriticalError(f"{path}:{line}: amount {text!r} is not a number") from exc


def _month(text: str, path: Path, line: int) -> str:
    try:
        return date.fromisoformat(text).strftime("%Y-%m")
    except (ValueError, TypeError) as exc:
        raise CriticalError(f"{path}:{line}: posting_date {text!r} is not an ISO date") from exc

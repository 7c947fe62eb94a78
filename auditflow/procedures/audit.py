"""Built-in audit procedures over a ledger of journal entries or payments, in DuckDB, in chunks.

Every procedure reads the ledger named by its parameters (`path` of a CSV, Parquet or Excel file
under a data root, or `source` and `table` of a database the server names; columns
`entry_id, posting_date, vendor, account, amount, currency, description, created_by,
approved_by`). Each call of a procedure hands over the findings it found
(`Chunk.findings`: `{"procedure", "severity", "entry_ids", "amount", "explanation"}`; the
processor stores every one of them), and the last call returns the step's result, a summary
bounded in size whatever the ledger:

    {"summary": {"entries", "findings", "by_severity", "amount_at_stake", "top", ...}}

`top` holds the first few findings in order: by severity (high, medium, low), then by amount
at stake. Amounts are decimal strings, as in the ledger. A ledger that cannot be read (missing file or columns, an
amount or date that does not parse, no rows, not UTF-8) fails the run with a `CriticalError`
that names the source, the line and the problem (`auditflow.procedures.table`). The
parameters are checked at `CreateWorkflow` (see each procedure's `validate`), including that
the source exists and has the columns.

Each procedure is chunked (`register_chunked`): the ledger is cut into ranges of vendors (or
accounts, for `outliers` by account) of about `chunk_rows` rows (default 250 000), and a call
does one chunk with a few SQL queries; the state carries counters, the top few findings, and
what the last call needs (digit counts for Benford): never the findings themselves. The work
that only a sequence can do (which duplicates group together, which payments form one split
purchase) runs in Python on the few candidate rows the SQL
selects, so the findings are the same as a row-by-row pass.

The methods, their parameters and references are in docs/procedures.md.
"""

from __future__ import annotations

import copy
import heapq
import math
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from statistics import NormalDist
from typing import Any

from auditflow.errors import FieldViolation
from auditflow.procedures import AUDIT_PROCEDURES, Chunk, ChunkFn, CriticalError, register_chunked, stats
from auditflow.procedures.table import COLUMNS, Ledger, check_source, money, open_ledger

__all__ = ["COLUMNS", "PROCEDURES", "money"]

PROCEDURES = AUDIT_PROCEDURES  # the procedures of this module

SEVERITIES = ("high", "medium", "low")
DEFAULT_CHUNK_ROWS = 250_000
MAX_CHUNK_ROWS = 1_000_000  # what one call may read: bounds a cycle's memory and time
TOP = 5  # findings a step's summary shows


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    procedure: str
    severity: str
    entry_ids: list[str]
    cents: int
    explanation: str

    def to_json(self) -> dict[str, Any]:
        return {
            "procedure": self.procedure,
            "severity": self.severity,
            "entry_ids": self.entry_ids,
            "amount": money(self.cents),
            "explanation": self.explanation,
        }


def order(finding: dict[str, Any]) -> tuple[int, Decimal, list[str]]:
    """Findings in the order an auditor reads them: high first, then by amount at stake."""
    return (SEVERITIES.index(finding["severity"]), -abs(Decimal(finding["amount"])), finding["entry_ids"])


def _count(acc: dict[str, Any], findings: list[Finding]) -> None:
    """Count `findings` into the step's totals and keep its `TOP` first in order (the summary
    shows them; every finding is stored by the processor, not kept here)."""
    if not findings:
        return
    acc["count"] += len(findings)
    acc["stake"] += sum(abs(f.cents) for f in findings)
    for severity, n in Counter(f.severity for f in findings).items():
        acc["by_severity"][severity] += n
    first = heapq.nsmallest(TOP, findings, key=lambda f: (SEVERITIES.index(f.severity), -abs(f.cents), f.entry_ids))
    acc["top"] = sorted([*acc["top"], *(f.to_json() for f in first)], key=order)[:TOP]


# --- parameter checks ------------------------------------------------------------------------

Check = Callable[[Any], bool]


def _number(low: float, high: float, *, whole: bool = False) -> Check:
    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        return (not whole or value == int(value)) and low <= value <= high

    return check


Relations = Callable[[dict[str, Any]], Iterator[FieldViolation]]


def validator(
    relations: Relations | None = None, **checks: tuple[Check, str]
) -> Callable[[dict[str, Any]], Iterator[FieldViolation]]:
    """A `validate` for a procedure: each named parameter (all optional), how they relate to
    each other (`relations`, once each is valid), then the ledger source."""
    allowed = {"path", "url", "source", "table", "chunk_rows", *checks}
    every = {
        "chunk_rows": (_number(1, MAX_CHUNK_ROWS, whole=True), f"a whole number of rows, 1 to {MAX_CHUNK_ROWS}"),
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


def _cents_param(parameters: dict[str, Any], name: str, default: float) -> int:
    return int((Decimal(str(parameters.get(name, default))) * 100).to_integral_value())


# --- the chunk driver ------------------------------------------------------------------------

# scan(ledger, parameters, where, args, extra) -> the findings of one chunk; `where` is the SQL
# condition that selects the chunk's rows, with `args`; `extra` is the procedure's own state.
Scan = Callable[[Ledger, dict[str, Any], str, list[Any], dict[str, Any]], list[Finding]]
# finish(ledger, parameters, extra) -> (findings found only at the end, summary fields)
Finish = Callable[[Ledger, dict[str, Any], dict[str, Any]], tuple[list[Finding], dict[str, Any]]]


def audit_procedure(
    name: str,
    doc: str,
    scan: Scan,
    finish: Finish,
    *,
    key: Callable[[dict[str, Any]], str] = lambda parameters: "vendor",
    relations: Relations | None = None,
    **checks: tuple[Check, str],
) -> ChunkFn:
    """Register a chunked audit procedure made of a per-chunk `scan` and a final `finish`."""

    def chunk(parameters: dict[str, Any], state: dict[str, Any] | None) -> Chunk:
        ledger = open_ledger(parameters)
        column = key(parameters)
        chunk_rows = int(parameters.get("chunk_rows", DEFAULT_CHUNK_ROWS))
        bounds = ledger.chunks(column, chunk_rows)
        if state is None:
            acc = {"top": [], "count": 0, "stake": 0, "by_severity": dict.fromkeys(SEVERITIES, 0), "extra": {}}
            state = {"chunk": 0, "chunks": len(bounds), "entries": ledger.rows, "acc": acc}
        else:
            if (state.get("chunks"), state.get("entries")) != (len(bounds), ledger.rows):
                raise CriticalError(f"{ledger.label}: the ledger changed while the step ran; run it again")
            state = copy.deepcopy(state)  # the caller's checkpoint stays as it was
        acc = state["acc"]
        index = int(state["chunk"])
        found: list[Finding] = []
        read = 0
        if index < len(bounds):
            low, high = bounds[index]
            found = scan(ledger, parameters, f"{column} BETWEEN ? AND ?", [low, high], acc["extra"])
            read = ledger.chunk_sizes(column, chunk_rows)[index]
            _count(acc, found)
            index = state["chunk"] = index + 1
        if index < len(bounds):
            return Chunk(state, index, len(bounds), findings=[f.to_json() for f in found], rows=read)
        last, summary = finish(ledger, parameters, acc["extra"])
        _count(acc, last)
        result = {
            "summary": {
                "entries": ledger.rows,
                "findings": acc["count"],
                "by_severity": acc["by_severity"],
                "amount_at_stake": money(acc["stake"]),
                "top": acc["top"],
                **summary,
            },
        }
        return Chunk(state, index, len(bounds), result, findings=[f.to_json() for f in [*found, *last]], rows=read)

    chunk.__name__ = name
    chunk.__doc__ = doc
    return register_chunked(name, validate=validator(relations, **checks))(chunk)


# --- duplicate_payments ----------------------------------------------------------------------


def _duplicates_scan(
    ledger: Ledger, parameters: dict[str, Any], where: str, args: list[Any], extra: dict[str, Any]
) -> list[Finding]:
    days = int(parameters.get("days", 7))
    tolerance = float(parameters.get("tolerance", 0))
    if tolerance == 0:  # same amount: neighbours in date order within (vendor, amount)
        candidates = f"""SELECT row_no FROM (
                SELECT row_no, posting_date, lag(posting_date) OVER w AS prev, lead(posting_date) OVER w AS next
                FROM ledger WHERE {where} AND cents <> 0
                WINDOW w AS (PARTITION BY vendor, cents ORDER BY posting_date))
            WHERE posting_date - prev <= {days} OR next - posting_date <= {days}"""
        query_args = args
    else:  # amounts within the tolerance: a band join within the vendor
        candidates = f"""WITH l AS (SELECT row_no, vendor, cents, posting_date FROM ledger WHERE {where} AND cents <> 0)
            SELECT unnest([a.row_no, b.row_no]) FROM l a JOIN l b ON a.vendor = b.vendor AND a.row_no <> b.row_no
                AND b.cents >= a.cents AND b.cents <= floor(a.cents + abs(a.cents) * {tolerance!r})
                AND abs(a.posting_date - b.posting_date) <= {days}"""
        query_args = args
    rows = (
        ledger.cursor()
        .execute(
            f"""SELECT entry_id, vendor, cents, posting_date, description FROM ledger
                WHERE row_no IN ({candidates}) ORDER BY row_no""",
            query_args,
        )
        .fetchall()
    )
    by_vendor: dict[str, list[tuple[str, str, int, date, str]]] = defaultdict(list)
    for row in rows:
        by_vendor[row[1]].append(row)
    findings = []
    for vendor, entries in by_vendor.items():
        entries.sort(key=lambda r: (r[2], r[3], r[0]))
        amounts = [r[2] for r in entries]
        used: set[int] = set()
        for a, (_, _, cents, day, _) in enumerate(entries):
            if a in used:
                continue
            high = cents + abs(cents) * tolerance
            group = [a]
            for b in range(a + 1, bisect_right(amounts, math.floor(high))):
                if b not in used and abs((entries[b][3] - day).days) <= days:
                    group.append(b)
            if len(group) < 2:
                continue
            used.update(group)
            members = [entries[k] for k in group]
            exact = len({m[4] for m in members}) < len(members)
            same = len({m[2] for m in members}) == 1
            extra_cents = sum(m[2] for m in members[1:])
            span = (max(m[3] for m in members) - min(m[3] for m in members)).days
            kind = "exact duplicate (same description)" if exact else "possible duplicate"
            amount = money(cents) if same else f"about {money(cents)}"
            findings.append(
                Finding(
                    "duplicate_payments",
                    "high" if exact else "medium",
                    [m[0] for m in members],
                    extra_cents,
                    f"{kind}: {len(members)} payments of {amount} to {vendor} within {span} day(s); "
                    f"check that {money(extra_cents)} was not paid twice",
                )
            )
    return findings


def _duplicates_finish(
    ledger: Ledger, parameters: dict[str, Any], extra: dict[str, Any]
) -> tuple[list[Finding], dict[str, Any]]:
    return [], {"days": int(parameters.get("days", 7)), "tolerance": float(parameters.get("tolerance", 0))}


duplicate_payments = audit_procedure(
    "duplicate_payments",
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
    _duplicates_scan,
    _duplicates_finish,
    days=(_number(0, 366, whole=True), "a whole number of days between 0 and 366"),
    tolerance=(_number(0, 0.5), "a fraction between 0 and 0.5 (0.01 = 1 %)"),
)


# --- benford_first_digit ---------------------------------------------------------------------

BENFORD_IDS = 50  # entries a Benford finding lists


def _benford_scan(
    ledger: Ledger, parameters: dict[str, Any], where: str, args: list[Any], extra: dict[str, Any]
) -> list[Finding]:
    """Count the chunk's amounts per first two digits and magnitude (the first-digit test
    folds the pairs); the test itself runs once, at the end, on the counts of the whole."""
    floor = max(_cents_param(parameters, "min_amount", 10), 1)
    cells = (
        ledger.cursor()
        .execute(
            f"""SELECT CAST(left(rpad(text, 2, '0'), 2) AS INTEGER), length(text), count(*), sum(value)
                FROM (SELECT abs(cents) AS value, CAST(abs(cents) AS VARCHAR) AS text FROM ledger
                      WHERE {where} AND abs(cents) >= {floor})
                GROUP BY ALL""",
            args,
        )
        .fetchall()
    )
    for pair, magnitude, count, total in cells:
        cell = extra.setdefault("cells", {}).setdefault(str(pair), {}).setdefault(str(magnitude), [0, 0])
        cell[0] += int(count)
        cell[1] += int(total)
    return []


def _benford_finish(
    ledger: Ledger, parameters: dict[str, Any], extra: dict[str, Any]
) -> tuple[list[Finding], dict[str, Any]]:
    alpha = float(parameters.get("alpha", 0.01))
    width = int(parameters.get("leading_digits", 1))
    floor = _cents_param(parameters, "min_amount", 10)
    min_entries = int(parameters.get("min_entries", 100))
    pairs = {int(p): {int(m): (int(c), int(t)) for m, (c, t) in ms.items()} for p, ms in extra.get("cells", {}).items()}
    cells = stats.fold(pairs, width)
    counts = {d: sum(c for c, _ in by_magnitude.values()) for d, by_magnitude in cells.items()}
    n = sum(counts.values())
    if n < min_entries:
        return [], {"tested": n, "skipped": f"fewer than {min_entries} amounts of at least {money(floor)}"}
    test = stats.benford_test(counts, width, alpha)
    bounds = {r.digits: _excess_bounds(r, test, cells) for r in test.flagged}
    ranked = _largest_in(ledger, bounds, {r.digits: min(math.ceil(r.excess), BENFORD_IDS) for r in test.flagged})
    findings = [_benford_finding(r, test, cells, bounds[r.digits], ranked.get(r.digits, [])) for r in test.flagged]
    summary = {
        "test": stats.TEST_NAMES[width],
        "tested": n,
        "chi_square": round(test.chi_square, 3),
        "p_value": test.p_value,
        "mad": round(test.mad, 6),
        "conformity": test.conformity,
        "digits": [r.digits for r in test.flagged],
        "observed": {str(r.digits): round(r.actual, 5) for r in test.results},
        "expected": {str(r.digits): round(r.expected, 5) for r in test.results},
        "excess": {str(r.digits): round(r.excess) for r in test.results},
        "z": {str(r.digits): round(r.z, 2) for r in test.results},
    }
    return findings, summary


def _excess_bounds(result: stats.DigitResult, test: stats.BenfordResult, cells: stats.Cells) -> tuple[int, int]:
    magnitude = stats.excess_magnitude(result, cells)
    assert magnitude is not None  # a flagged digit has amounts
    return stats.cell_bounds(result.digits, test.width, magnitude)


def _largest_in(ledger: Ledger, bounds: dict[int, tuple[int, int]], limits: dict[int, int]) -> dict[int, list[str]]:
    """Per flagged digit, the entries of the band of amounts where its excess lies, largest
    first (one pass over the ledger for every digit)."""
    if not bounds:
        return {}
    values = ", ".join(f"({d}, {low}, {high}, {limits[d]})" for d, (low, high) in bounds.items())
    rows = (
        ledger.cursor()
        .execute(
            f"""WITH band(digits, low, high, k) AS (VALUES {values})
                SELECT digits, entry_id FROM ledger JOIN band ON abs(cents) BETWEEN low AND high
                QUALIFY row_number() OVER (PARTITION BY digits ORDER BY abs(cents) DESC, row_no) <= k
                ORDER BY digits, abs(cents) DESC, row_no"""
        )
        .fetchall()
    )
    ranked: dict[int, list[str]] = defaultdict(list)
    for digits, entry_id in rows:
        ranked[int(digits)].append(entry_id)
    return ranked


def _benford_finding(
    result: stats.DigitResult,
    test: stats.BenfordResult,
    cells: stats.Cells,
    bounds: tuple[int, int],
    entries: list[str],
) -> Finding:
    value = stats.excess_value(result, cells)
    band = f"{money(bounds[0])} to {money(bounds[1])}"
    name = "first digit" if test.width == 1 else "first two digits"
    return Finding(
        "benford_first_digit",
        test.severity(result),
        entries,
        value,
        f"{name} {result.digits}: {result.actual:.2%} of {result.n} amounts, Benford expects "
        f"{result.expected:.2%} (z = {result.z:.1f}), {round(result.excess)} entries too many, most from "
        f"{band}: about {money(value)} at their average there; {test.conformity} (MAD {test.mad:.4f}). "
        f"Entries shown: the largest from {band}",
    )


benford_first_digit = audit_procedure(
    "benford_first_digit",
    """Leading digits of the amounts against Benford's law, judged by the MAD (Nigrini).

    Detects: a leading-digit distribution that does not conform to Benford's law, and the
    digits with materially too many entries. `leading_digits` 1 (default) runs the
    first-digit test (1-9), 2 the first-two-digits test (10-99), which points at a narrow band
    of amounts. The verdict is the mean absolute deviation (MAD) between observed and expected
    proportions, in Nigrini's bands (first digit: close <= 0.006, acceptable <= 0.012,
    marginal <= 0.015; first two: 0.0012, 0.0018, 0.0022; past them nonconformity): unlike the
    chi-square, which rejects any real ledger once it is large, the MAD does not grow with the
    number of amounts. The summary also has the chi-square, its p-value, and per digit the
    proportions, the excess entries and the z-statistic.
    A digit is a finding only when conformity is not acceptable (marginal or nonconformity),
    it has more entries than expected with a z (continuity-corrected) significant at `alpha`,
    and its excess is material: its proportion exceeds Benford's by more than the acceptable
    MAD (0.012, or 0.0018 for two digits). A large ledger makes every deviation significant;
    only material ones are flagged. The finding's amount is its excess entries at their
    average amount in the band where the excess lies (e.g. 480.00 to 489.99); its entries
    (as many as the excess, up to 50) are the largest of that band. Severity high when the
    digit alone puts the MAD past the marginal band (2 x excess proportion / number of digits),
    medium otherwise. Under-represented digits are not findings.
    Amounts below `min_amount` (default 10) are left out, as Nigrini advises; with fewer than
    `min_entries` (default 100) amounts the test is not run.
    Ledger: path, or source and table; chunk_rows (default 250000).
    Parameters: leading_digits (1); alpha (0.01); min_amount (10); min_entries (100).
    Reference: Nigrini, M. (2012), Benford's Law: Applications for Forensic Accounting,
    Auditing, and Fraud Detection, Wiley, ch. 5 and 7 (the first-two digits test, the
    z-statistic; table 7.1, the MAD conformity ranges).
    """,
    _benford_scan,
    _benford_finish,
    leading_digits=(lambda value: value in (1, 2) and not isinstance(value, bool), "1 (first digit) or 2 (first two)"),
    alpha=(_number(1e-9, 0.2), "a significance level between 1e-9 and 0.2"),
    min_amount=(_number(0, 1e12), "an amount of at least 0"),
    min_entries=(_number(10, 1e9, whole=True), "a whole number of at least 10"),
)

# --- round_amounts ---------------------------------------------------------------------------


def _round_scan(
    ledger: Ledger, parameters: dict[str, Any], where: str, args: list[Any], extra: dict[str, Any]
) -> list[Finding]:
    multiple = _cents_param(parameters, "multiple", 1000)
    floor = _cents_param(parameters, "min_amount", parameters.get("multiple", 1000))
    rows = (
        ledger.cursor()
        .execute(
            f"""SELECT entry_id, cents, vendor, posting_date FROM ledger WHERE {where} AND cents <> 0
                AND abs(cents) >= {floor} AND abs(cents) % {multiple} = 0 ORDER BY row_no""",
            args,
        )
        .fetchall()
    )
    return [
        Finding(
            "round_amounts",
            "medium" if abs(cents) % (10 * multiple) == 0 else "low",
            [entry_id],
            cents,
            f"{money(cents)} to {vendor} on {day} is a multiple of "
            f"{money(multiple)}: ask for the invoice or the basis of the estimate",
        )
        for entry_id, cents, vendor, day in rows
    ]


def _round_finish(
    ledger: Ledger, parameters: dict[str, Any], extra: dict[str, Any]
) -> tuple[list[Finding], dict[str, Any]]:
    return [], {"multiple": money(_cents_param(parameters, "multiple", 1000))}


round_amounts = audit_procedure(
    "round_amounts",
    """Amounts that are exact multiples of a round figure (estimates, plugs, made-up invoices).

    Detects: entries whose absolute amount is an exact multiple of `multiple` (default 1000)
    and at least `min_amount` (default: the multiple). Severity medium for multiples of ten
    times `multiple`, low otherwise.
    Ledger: path, or source and table; chunk_rows (default 250000).
    Parameters: multiple (default 1000); min_amount (default = multiple).
    Reference: Nigrini (2011), Forensic Analytics, ch. 8 ("round numbers test"); ISA 240
    A44 / AS 2401.61 (journal entries with round numbers or consistent ending digits).
    """,
    _round_scan,
    _round_finish,
    multiple=(_number(0.01, 1e12), "an amount of at least 0.01"),
    min_amount=(_number(0, 1e12), "an amount of at least 0"),
)


# --- weekend_postings ------------------------------------------------------------------------


def _is_date_list(value: Any) -> bool:
    if not isinstance(value, list) or len(value) > 10_000:
        return False
    try:
        for item in value:
            date.fromisoformat(item)
    except (TypeError, ValueError):
        return False
    return True


def _weekend_scan(
    ledger: Ledger, parameters: dict[str, Any], where: str, args: list[Any], extra: dict[str, Any]
) -> list[Finding]:
    holidays = sorted({date.fromisoformat(d) for d in parameters.get("holidays", [])})
    rows = (
        ledger.cursor()
        .execute(
            f"""SELECT entry_id, cents, vendor, posting_date, created_by,
                    list_contains(CAST(? AS DATE[]), posting_date) AS holiday
                FROM ledger WHERE {where}
                    AND (isodow(posting_date) >= 6 OR list_contains(CAST(? AS DATE[]), posting_date))
                ORDER BY row_no""",
            [holidays, *args, holidays],
        )
        .fetchall()
    )
    findings = []
    for entry_id, cents, vendor, day, created_by, holiday in rows:
        if holiday:
            extra["holiday"] = extra.get("holiday", 0) + 1
            severity, why = "medium", "a holiday"
        else:
            extra["weekend"] = extra.get("weekend", 0) + 1
            severity, why = "low", f"a {day.strftime('%A')}"
        findings.append(
            Finding(
                "weekend_postings",
                severity,
                [entry_id],
                cents,
                f"posted on {why} ({day}) by {created_by or 'unknown'}: "
                f"{money(cents)} to {vendor}; confirm it was authorised",
            )
        )
    return findings


def _weekend_finish(
    ledger: Ledger, parameters: dict[str, Any], extra: dict[str, Any]
) -> tuple[list[Finding], dict[str, Any]]:
    listed = len(set(parameters.get("holidays", [])))
    return [], {"weekend": extra.get("weekend", 0), "holiday": extra.get("holiday", 0), "holidays_listed": listed}


weekend_postings = audit_procedure(
    "weekend_postings",
    """Entries posted on a Saturday, a Sunday or a listed holiday.

    Detects: postings on days the business is closed, when nobody should be booking. Severity
    medium on a holiday, low on a weekend.
    Ledger: path, or source and table; chunk_rows (default 250000).
    Parameters: holidays (list of ISO dates, default none).
    Reference: ISA 240 A44 and PCAOB AS 2401.61 (entries "made at unusual times"); Nigrini
    (2011), Forensic Analytics, ch. 13 (journal entry tests).
    """,
    _weekend_scan,
    _weekend_finish,
    holidays=(_is_date_list, "a list of ISO dates (YYYY-MM-DD)"),
)


# --- split_purchases -------------------------------------------------------------------------

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
    def of(cls, parameters: dict[str, Any]) -> SplitRule:
        limit = _cents_param(parameters, "approval_limit", SPLIT_DEFAULTS["approval_limit"])
        share = float(parameters.get("min_share", SPLIT_DEFAULTS["min_share"]))
        return cls(
            limit,
            max(1, math.ceil(limit * share)),
            int(parameters.get("days", SPLIT_DEFAULTS["days"])),
            int(parameters.get("min_payments", SPLIT_DEFAULTS["min_payments"])),
            int(parameters.get("max_payments", SPLIT_DEFAULTS["max_payments"])),
        )


Payment = tuple[date, int, str]  # posting date, cents, entry id


def split_windows(payments: list[Payment], rule: SplitRule) -> tuple[list[list[Payment]], int]:
    """The split purchases among one vendor's payments of [low, limit), and the busy windows.

    Greedy in date order, and windows never overlap: a window is every payment within `days`
    of its first; when it is a split (between min_payments and max_payments payments, together
    above the limit) or busy (more than max_payments: the vendor's ordinary flow, not one
    purchase), the next window starts after it, so a long run of payments is never chained into
    one window. Otherwise the next window starts at the next payment.
    """
    payments = sorted(payments)
    dates = [p[0] for p in payments]
    windows: list[list[Payment]] = []
    busy = 0
    start = 0
    while start < len(payments):
        end = bisect_right(dates, dates[start] + timedelta(days=rule.days))
        window = payments[start:end]
        if len(window) > rule.max_payments:
            busy += 1
        elif len(window) >= rule.min_payments and sum(p[1] for p in window) > rule.limit:
            windows.append(window)
        else:
            start += 1
            continue
        start = end
    return windows, busy


def _split_scan(
    ledger: Ledger, parameters: dict[str, Any], where: str, args: list[Any], extra: dict[str, Any]
) -> list[Finding]:
    rule = SplitRule.of(parameters)
    # Only the vendors with a date window (a superset of the greedy windows) of enough payments
    # in [low, limit) above the limit come back; the windows are then cut in Python, per vendor.
    rows = (
        ledger.cursor()
        .execute(
            f"""WITH near AS (SELECT vendor, entry_id, cents, posting_date FROM ledger
                              WHERE {where} AND cents >= {rule.low} AND cents < {rule.limit}),
                windows AS (SELECT vendor, sum(cents) OVER w AS total, count(*) OVER w AS n FROM near
                    WINDOW w AS (PARTITION BY vendor ORDER BY posting_date - DATE '2000-01-01'
                                 RANGE BETWEEN CURRENT ROW AND {rule.days} FOLLOWING))
                SELECT vendor, posting_date, cents, entry_id FROM near
                WHERE vendor IN (SELECT vendor FROM windows WHERE total > {rule.limit} AND n >= {rule.min_payments})""",
            args,
        )
        .fetchall()
    )
    by_vendor: dict[str, list[Payment]] = defaultdict(list)
    for vendor, day, cents, entry_id in rows:
        by_vendor[vendor].append((day, cents, entry_id))
    findings = []
    for vendor, payments in sorted(by_vendor.items()):
        windows, busy = split_windows(payments, rule)
        if busy:
            extra["busy_windows"] = extra.get("busy_windows", 0) + busy
            extra["busy_vendors"] = extra.get("busy_vendors", 0) + 1
        findings += [_split_finding(vendor, window, rule) for window in windows]
    return findings


def _split_finding(vendor: str, window: list[Payment], rule: SplitRule) -> Finding:
    total = sum(p[1] for p in window)
    first, last = window[0][0], window[-1][0]
    smallest, largest = min(p[1] for p in window), max(p[1] for p in window)
    return Finding(
        "split_purchases",
        "high",
        [p[2] for p in window],
        total,
        f"{len(window)} payments to {vendor} within {(last - first).days} day(s) ({first} to {last}), "
        f"each {money(smallest)} to {money(largest)}: at least {money(rule.low)} and under the approval "
        f"limit of {money(rule.limit)}, together {money(total)}: check for one purchase split to avoid approval",
    )


def _split_finish(
    ledger: Ledger, parameters: dict[str, Any], extra: dict[str, Any]
) -> tuple[list[Finding], dict[str, Any]]:
    rule = SplitRule.of(parameters)
    return [], {
        "approval_limit": money(rule.limit),
        "min_payment": money(rule.low),
        "days": rule.days,
        "payments": [rule.min_payments, rule.max_payments],
        "busy_windows": extra.get("busy_windows", 0),
        "busy_vendors": extra.get("busy_vendors", 0),
    }


def _split_relations(parameters: dict[str, Any]) -> Iterator[FieldViolation]:
    low, high = (parameters.get(k, SPLIT_DEFAULTS[k]) for k in ("min_payments", "max_payments"))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) and high < low:
        yield FieldViolation("parameters.max_payments", f"at least min_payments ({low})")


split_purchases = audit_procedure(
    "split_purchases",
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
    _split_scan,
    _split_finish,
    relations=_split_relations,
    approval_limit=(_number(0.01, 1e12), "an amount of at least 0.01"),
    min_share=(_number(0, 0.99), "a fraction of the approval limit between 0 and 0.99"),
    days=(_number(0, 366, whole=True), "a whole number of days between 0 and 366"),
    min_payments=(_number(2, 1000, whole=True), "a whole number between 2 and 1000"),
    max_payments=(_number(2, 1000, whole=True), "a whole number between 2 and 1000"),
)


# --- segregation_of_duties -------------------------------------------------------------------


def _duties_scan(
    ledger: Ledger, parameters: dict[str, Any], where: str, args: list[Any], extra: dict[str, Any]
) -> list[Finding]:
    rows = (
        ledger.cursor()
        .execute(
            f"""SELECT entry_id, cents, vendor, posting_date, created_by, approved_by FROM ledger
                WHERE {where} AND (trim(approved_by) = '' OR lower(trim(created_by)) = lower(trim(approved_by)))
                ORDER BY row_no""",
            args,
        )
        .fetchall()
    )
    per_person = extra.setdefault("per_person", {})
    findings = []
    for entry_id, cents, vendor, day, creator, approver in rows:
        who = creator.strip()
        if not approver.strip():
            severity, why = "medium", f"created by {who or 'unknown'} and never approved"
        elif who.casefold() == approver.strip().casefold():
            severity, why = "high", f"created and approved by {who}"
            per_person[who] = per_person.get(who, 0) + 1
        else:
            continue
        findings.append(
            Finding(
                "segregation_of_duties",
                severity,
                [entry_id],
                cents,
                f"{money(cents)} to {vendor} on {day} {why}: have someone else review it",
            )
        )
    return findings


def _duties_finish(
    ledger: Ledger, parameters: dict[str, Any], extra: dict[str, Any]
) -> tuple[list[Finding], dict[str, Any]]:
    return [], {"self_approved_by": dict(sorted(extra.get("per_person", {}).items()))}


segregation_of_duties = audit_procedure(
    "segregation_of_duties",
    """Entries created and approved by the same person, or never approved.

    Detects: a breach of the four-eyes principle. Severity high when the creator approved
    their own entry (names compared without case or surrounding spaces), medium when the
    approver is missing.
    Ledger: path, or source and table; chunk_rows (default 250000).
    Parameters:
    Reference: COSO Internal Control - Integrated Framework (2013), principle 10 (segregation
    of duties); ISA 315 (revised 2019) appendix 3.
    """,
    _duties_scan,
    _duties_finish,
)


# --- outliers --------------------------------------------------------------------------------


OUTLIER_FLOOR = 3.5  # Iglewicz and Hoaglin's cut-off for one test: the threshold never goes below
SIDES = ("high", "low", "both")
MAD_DF = 0.4  # degrees of freedom of a group's modified z per entry: t with 0.4 (n - 1) df


def per_test_level(tests: int, alpha: float = 0.05, side: str = "high") -> float:
    """The level of each of `tests` tests that gives a chance of at most `alpha` of any false
    alarm among them (Sidak: 1 - (1 - alpha)^(1/tests)), halved per side for "both"."""
    level = -math.expm1(math.log1p(-alpha) / max(tests, 1))
    return level / 2 if side == "both" else level


def outlier_threshold(tests: int, alpha: float = 0.05, side: str = "high", group: int | None = None) -> float:
    """The modified z beyond which an entry is an outlier, so that a clean ledger of `tests`
    normal (log) amounts has a chance of at most about `alpha` of any false alarm.

    Each entry is a test; with a fixed threshold the false alarms grow with the ledger (3.5 is
    passed by 2.3 in 10 000 normal values on one side: 230 at a million). The threshold is
    instead the quantile of the per-test level (`per_test_level`): for large groups the normal
    one, 4.4 at 10 000 tests, 4.9 at 100 000, 5.3 at a million. The MAD of a small group is
    itself noisy, so its modified z has heavier tails than the normal: for a group of `group`
    entries the quantile is Student's t with 0.4 (group - 1) degrees of freedom, which matches
    the simulated tails of the modified z of 8 to 50 normal values (at a million tests: 19.2
    for a group of 20, 8.1 for 50, 5.9 for 200). Never below 3.5.
    """
    level = per_test_level(tests, alpha, side)
    quantile = -NormalDist().inv_cdf(level) if group is None else student_t_isf(level, MAD_DF * (group - 1))
    return max(OUTLIER_FLOOR, quantile)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return h


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom (t >= 0): half the regularized
    incomplete beta I_x(df / 2, 1 / 2) at x = df / (df + t^2)."""
    a, b, x = df / 2, 0.5, df / (df + t * t)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a / 2
    return (1 - front * _beta_fraction(b, a, 1 - x) / b) / 2


@lru_cache(maxsize=4096)
def student_t_isf(level: float, df: float) -> float:
    """The t with P(T > t) = level (level < 0.5), by bisection on log t."""
    low, high = math.log(-NormalDist().inv_cdf(level)), math.log(1e9)  # t's quantile is above the normal's
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if student_t_sf(math.exp(mid), df) > level else (low, mid)
    return math.exp(high)


def _outliers_tests(ledger: Ledger, by: str, min_entries: int) -> int:
    """The entries the whole ledger will test: non-zero amounts in groups of at least min_entries."""
    row = (
        ledger.cursor()
        .execute(
            f"""SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM ledger WHERE cents <> 0 GROUP BY {by})
                WHERE n >= {min_entries}"""
        )
        .fetchone()
    )
    return int(row[0]) if row else 0


def _outliers_limit(ledger: Ledger, parameters: dict[str, Any], extra: dict[str, Any]) -> Callable[[int | None], float]:
    """group size (None: a large group) -> threshold: the one given, or set by the number of
    tests, counted on the first chunk."""
    if "threshold" in parameters:
        return lambda group: float(parameters["threshold"])
    if "tests" not in extra:
        by, min_entries = str(parameters.get("by", "vendor")), int(parameters.get("min_entries", 8))
        extra["tests"] = _outliers_tests(ledger, by, min_entries)
    tests, alpha = int(extra["tests"]), float(parameters.get("alpha", 0.05))
    side = str(parameters.get("side", "high"))
    return lambda group: outlier_threshold(tests, alpha, side, group)


def _outliers_scan(
    ledger: Ledger, parameters: dict[str, Any], where: str, args: list[Any], extra: dict[str, Any]
) -> list[Finding]:
    by = str(parameters.get("by", "vendor"))
    limit = _outliers_limit(ledger, parameters, extra)
    min_entries = int(parameters.get("min_entries", 8))
    log = parameters.get("scale", "log") == "log"
    value = "log10(abs(cents))" if log else "cents / 100"
    beyond = {"high": "score > lim", "low": "score < -lim", "both": "abs(score) > lim"}
    values = f"""SELECT row_no, entry_id, {by} AS grp, cents, posting_date, {value} AS x
                 FROM ledger WHERE {where} AND cents <> 0"""
    cursor = ledger.cursor()
    # The median and MAD of each group, once; then the entries beyond their group's threshold.
    groups = cursor.execute(
        f"""WITH v AS ({values}),
                g AS (SELECT grp, median(x) AS center, count(*) AS n FROM v GROUP BY grp
                      HAVING count(*) >= {min_entries}),
                m AS (SELECT grp, median(abs(x - center)) AS mad FROM v JOIN g USING (grp) GROUP BY grp)
            SELECT grp, center, n, mad FROM g JOIN m USING (grp) WHERE mad <> 0""",
        args,
    ).fetchall()
    extra["groups_assessed"] = extra.get("groups_assessed", 0) + len(groups)
    columns = [list(column) for column in zip(*groups, strict=True)] or [[], [], [], []]
    rows = cursor.execute(
        f"""WITH v AS ({values}),
                s AS (SELECT unnest(CAST(? AS VARCHAR[])) AS grp, unnest(CAST(? AS DOUBLE[])) AS center,
                             unnest(CAST(? AS BIGINT[])) AS n, unnest(CAST(? AS DOUBLE[])) AS mad,
                             unnest(CAST(? AS DOUBLE[])) AS lim)
            SELECT entry_id, cents, posting_date, grp, center, n, score, lim FROM (
                SELECT v.*, s.center, s.n, s.lim, 0.6745 * (x - center) / mad AS score FROM v JOIN s USING (grp))
            WHERE {beyond[str(parameters.get("side", "high"))]} ORDER BY row_no""",
        [*args, *columns, [limit(int(n)) for n in columns[2]]],
    ).fetchall()
    findings = []
    for entry_id, cents, day, group, center, n, score, lim in rows:
        typical = 10**center if log else center * 100  # cents
        findings.append(
            Finding(
                "outliers",
                "high" if abs(score) > 2 * lim else "medium",
                [entry_id],
                cents,
                f"{money(cents)} on {day} is far {'above' if score > 0 else 'below'} {by} {group}'s usual "
                f"{money(round(typical))} (robust z = {score:+.1f}, beyond {lim:.2f} for {n} entries): verify it",
            )
        )
    return findings


def _outliers_finish(
    ledger: Ledger, parameters: dict[str, Any], extra: dict[str, Any]
) -> tuple[list[Finding], dict[str, Any]]:
    summary = {
        "by": str(parameters.get("by", "vendor")),
        "groups_assessed": extra.get("groups_assessed", 0),
        "side": str(parameters.get("side", "high")),
        "threshold": round(_outliers_limit(ledger, parameters, extra)(None), 3),
    }
    if "threshold" not in parameters:
        summary |= {"tests": extra["tests"], "alpha": float(parameters.get("alpha", 0.05))}
    return [], summary


outliers = audit_procedure(
    "outliers",
    """Amounts far above a vendor's (or account's) usual range, by robust z-score, with the
    false alarms controlled over the whole ledger.

    Detects: entries whose modified z-score 0.6745 (x - median) / MAD within their group
    (`by`: vendor or account) is beyond the threshold. The median and the median absolute
    deviation are not moved by the outliers themselves, unlike mean and standard deviation.
    With `scale` "log" (default) x is log10 of the absolute amount, which suits amounts that
    spread over orders of magnitude. Groups with fewer than `min_entries` non-zero amounts, or
    a MAD of 0, are skipped.
    Every tested entry is a test, so a fixed threshold raises more false alarms the larger the
    ledger. By default the threshold grows with the number of tests N (the non-zero amounts in
    groups of at least min_entries): the normal quantile that gives a clean ledger a chance of
    at most `alpha` (0.05) of any false alarm (Sidak: 1 - (1 - alpha)^(1/N) per test), never
    below Iglewicz and Hoaglin's 3.5: 3.5 up to a few hundred tests, 4.4 at 10 000, 5.3 at a
    million. `threshold` sets it instead. `side` "high" (default) reports amounts above the
    usual only (overpayments, inflated invoices), "low" below only, "both" either (then alpha
    is split between the sides). Severity high beyond twice the threshold, medium otherwise.
    Ledger: path, or source and table; chunk_rows (default 250000).
    Parameters: by (default "vendor"); alpha (0.05); threshold (none: set by alpha and N);
    side ("high"); min_entries (8); scale ("log").
    Reference: Iglewicz, B. and Hoaglin, D. (1993), How to Detect and Handle Outliers, ASQC
    (the modified z-score and the 3.5 cut-off); Sidak, Z. (1967), Rectangular confidence
    regions for the means of multivariate normal distributions, JASA 62 (the per-test level).
    """,
    _outliers_scan,
    _outliers_finish,
    key=lambda parameters: str(parameters.get("by", "vendor")),
    by=(lambda v: v in ("vendor", "account"), 'either "vendor" or "account"'),
    alpha=(_number(1e-9, 0.5), "a false-alarm rate between 1e-9 and 0.5"),
    threshold=(_number(1, 100), "a number between 1 and 100"),
    side=(lambda v: v in SIDES, 'one of "high", "low", "both"'),
    min_entries=(_number(3, 1e9, whole=True), "a whole number of at least 3"),
    scale=(lambda v: v in ("log", "linear"), 'either "log" or "linear"'),
)

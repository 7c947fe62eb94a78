"""Built-in audit procedures over a ledger of journal entries or payments, in DuckDB, in chunks.

Every procedure reads the ledger named by its parameters (`path` of a CSV or Parquet file
under a data root, or `source` and `table` of a database the server names; columns
`entry_id, posting_date, vendor, account, amount, currency, description, created_by,
approved_by`) and returns

    {"findings": [{"procedure", "severity", "entry_ids", "amount", "explanation"}, ...],
     "summary": {"entries", "findings", "shown", "amount_at_stake", ...}}

Findings are ordered by severity (high, medium, low), then by amount at stake; at most
`max_findings` (default 200) are returned, and `summary.findings` counts them all. Amounts are
decimal strings, as in the ledger. A ledger that cannot be read (missing file or columns, an
amount or date that does not parse, no rows, not UTF-8) fails the run with a `CriticalError`
that names the source, the line and the problem (`auditflow.procedures.table`). The
parameters are checked at `CreateWorkflow` (see each procedure's `validate`), including that
the source exists and has the columns.

Each procedure is chunked (`register_chunked`): the ledger is cut into ranges of vendors (or
accounts, for `outliers` by account) of about `chunk_rows` rows (default 250 000), and a call
does one chunk with a few SQL queries; the state carries the findings kept so far (the
`max_findings` first in order, and counters for the rest) and what the last call needs (digit
counts for Benford). The work that only a sequence can do (which duplicates group together,
which payments form one split purchase) runs in Python on the few candidate rows the SQL
selects, so the findings are the same as a row-by-row pass.

The methods, their parameters and references are in docs/procedures.md.
"""

from __future__ import annotations

import copy
import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from auditflow.errors import FieldViolation
from auditflow.procedures import AUDIT_PROCEDURES, Chunk, ChunkFn, CriticalError, register_chunked
from auditflow.procedures.table import COLUMNS, Ledger, check_source, money, open_ledger

__all__ = ["COLUMNS", "PROCEDURES", "money"]

PROCEDURES = AUDIT_PROCEDURES  # the procedures of this module

SEVERITIES = ("high", "medium", "low")
DEFAULT_MAX_FINDINGS = 200
DEFAULT_CHUNK_ROWS = 250_000


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


def _order(finding: dict[str, Any]) -> tuple[int, int, list[str]]:
    return (SEVERITIES.index(finding["severity"]), -abs(finding["cents"]), finding["entry_ids"])


def _merge(acc: dict[str, Any], findings: list[Finding], limit: int) -> None:
    """Count `findings` into `acc` and keep the `limit` first in order."""
    if not findings:
        return
    acc["count"] += len(findings)
    acc["stake"] += sum(abs(f.cents) for f in findings)
    for f in findings:
        acc["by_severity"][f.severity] += 1
    kept = acc["findings"] + [{**f.to_json(), "cents": f.cents} for f in findings]
    kept.sort(key=_order)
    acc["findings"] = kept[:limit]


# --- parameter checks ------------------------------------------------------------------------

Check = Callable[[Any], bool]


def _number(low: float, high: float, *, whole: bool = False) -> Check:
    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        return (not whole or value == int(value)) and low <= value <= high

    return check


def validator(**checks: tuple[Check, str]) -> Callable[[dict[str, Any]], Iterator[FieldViolation]]:
    """A `validate` for a procedure: the ledger source, then each named parameter (all optional)."""
    allowed = {"path", "url", "source", "table", "max_findings", "chunk_rows", *checks}
    every = {
        "max_findings": (_number(1, 100_000, whole=True), "a whole number between 1 and 100000"),
        "chunk_rows": (_number(1, 1e9, whole=True), "a whole number of rows of at least 1"),
        **checks,
    }

    def validate(parameters: dict[str, Any]) -> Iterator[FieldViolation]:
        unknown = set(parameters) - allowed
        for name, (check, expected) in every.items():
            if name in parameters and not check(parameters[name]):
                yield FieldViolation(f"parameters.{name}", expected)
        if unknown:
            yield FieldViolation("parameters", f"unknown parameters: {', '.join(sorted(unknown))}")
        yield from check_source(parameters)

    return validate


def _max_findings(parameters: dict[str, Any]) -> int:
    return int(parameters.get("max_findings", DEFAULT_MAX_FINDINGS))


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
    **checks: tuple[Check, str],
) -> ChunkFn:
    """Register a chunked audit procedure made of a per-chunk `scan` and a final `finish`."""

    def chunk(parameters: dict[str, Any], state: dict[str, Any] | None) -> Chunk:
        ledger = open_ledger(parameters)
        column = key(parameters)
        bounds = ledger.chunks(column, int(parameters.get("chunk_rows", DEFAULT_CHUNK_ROWS)))
        limit = _max_findings(parameters)
        if state is None:
            acc = {"findings": [], "count": 0, "stake": 0, "by_severity": dict.fromkeys(SEVERITIES, 0), "extra": {}}
            state = {"chunk": 0, "chunks": len(bounds), "entries": ledger.rows, "acc": acc}
        else:
            if (state.get("chunks"), state.get("entries")) != (len(bounds), ledger.rows):
                raise CriticalError(f"{ledger.label}: the ledger changed while the step ran; run it again")
            state = copy.deepcopy(state)  # the caller's checkpoint stays as it was
        acc = state["acc"]
        index = int(state["chunk"])
        if index < len(bounds):
            low, high = bounds[index]
            _merge(acc, scan(ledger, parameters, f"{column} BETWEEN ? AND ?", [low, high], acc["extra"]), limit)
            index = state["chunk"] = index + 1
        if index < len(bounds):
            return Chunk(state, index, len(bounds))
        found, summary = finish(ledger, parameters, acc["extra"])
        _merge(acc, found, limit)
        kept = [{k: v for k, v in f.items() if k != "cents"} for f in acc["findings"]]
        result = {
            "findings": kept,
            "summary": {
                "entries": ledger.rows,
                "findings": acc["count"],
                "shown": min(acc["count"], limit),
                "by_severity": acc["by_severity"],
                "amount_at_stake": money(acc["stake"]),
                **summary,
            },
        }
        return Chunk(state, index, len(bounds), result)

    chunk.__name__ = name
    chunk.__doc__ = doc
    return register_chunked(name, validate=validator(**checks))(chunk)


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
    Parameters: days (default 7); tolerance (default 0); max_findings (default 200).
    Reference: ACFE Fraud Examiners Manual, "duplicate payments"; Nigrini (2011), Forensic
    Analytics, ch. 11 ("same-same-same" and "same-same-different" tests).
    """,
    _duplicates_scan,
    _duplicates_finish,
    days=(_number(0, 366, whole=True), "a whole number of days between 0 and 366"),
    tolerance=(_number(0, 0.5), "a fraction between 0 and 0.5 (0.01 = 1 %)"),
)


# --- benford_first_digit ---------------------------------------------------------------------

BENFORD = [math.log10(1 + 1 / d) for d in range(1, 10)]
# Nigrini (2012), Benford's Law, table 7.1: first-digit MAD conformity ranges.
MAD_BANDS = ((0.006, "close conformity"), (0.012, "acceptable conformity"), (0.015, "marginal conformity"))
BENFORD_IDS = 50


def first_digit(cents: int) -> int:
    """The first significant digit of an amount (0 for zero)."""
    value = abs(cents)
    while value >= 10:
        value //= 10
    return value


def chi2_sf_8(x: float) -> float:
    """P(X > x) for a chi-square variable with 8 degrees of freedom (closed form, even df)."""
    half = x / 2
    return math.exp(-half) * sum(half**i / math.factorial(i) for i in range(4))


def mad_conformity(mad: float) -> str:
    for limit, label in MAD_BANDS:
        if mad <= limit:
            return label
    return "nonconformity"


def _benford_scan(
    ledger: Ledger, parameters: dict[str, Any], where: str, args: list[Any], extra: dict[str, Any]
) -> list[Finding]:
    floor = max(_cents_param(parameters, "min_amount", 10), 1)
    digits = f"""SELECT row_no, entry_id, cents, CAST(left(CAST(abs(cents) AS VARCHAR), 1) AS INTEGER) AS digit
                 FROM ledger WHERE {where} AND abs(cents) >= {floor}"""
    cursor = ledger.cursor()
    counts = cursor.execute(f"SELECT digit, count(*), sum(cents) FROM ({digits}) GROUP BY digit", args).fetchall()
    top = cursor.execute(
        f"""SELECT digit, abs(cents), row_no, entry_id FROM (
                SELECT *, row_number() OVER (PARTITION BY digit ORDER BY abs(cents) DESC, row_no) AS rank
                FROM ({digits})) WHERE rank <= {BENFORD_IDS}""",
        args,
    ).fetchall()
    totals = extra.setdefault("counts", {})
    sums = extra.setdefault("sums", {})
    largest = extra.setdefault("top", {})
    for digit, count, total in counts:
        totals[str(digit)] = totals.get(str(digit), 0) + int(count)
        sums[str(digit)] = sums.get(str(digit), 0) + int(total)
    for digit, cents, row_no, entry_id in top:
        largest.setdefault(str(digit), []).append([int(cents), int(row_no), entry_id])
    for digit, entries in largest.items():
        largest[digit] = sorted(entries, key=lambda e: (-e[0], e[1]))[:BENFORD_IDS]
    return []


def _benford_finish(
    ledger: Ledger, parameters: dict[str, Any], extra: dict[str, Any]
) -> tuple[list[Finding], dict[str, Any]]:
    alpha = float(parameters.get("alpha", 0.01))
    floor = _cents_param(parameters, "min_amount", 10)
    min_entries = int(parameters.get("min_entries", 100))
    counts = [int(extra.get("counts", {}).get(str(d), 0)) for d in range(1, 10)]
    n = sum(counts)
    if n < min_entries:
        return [], {"tested": n, "skipped": f"fewer than {min_entries} amounts of at least {money(floor)}"}
    observed = [c / n for c in counts]
    chi2 = sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, BENFORD, strict=True))
    p_value = chi2_sf_8(chi2)
    mad = sum(abs(o - e) for o, e in zip(observed, BENFORD, strict=True)) / 9
    conformity = mad_conformity(mad)
    z_critical = _z_critical(alpha)
    findings = []
    digits = []
    for d, expected, actual in zip(range(1, 10), BENFORD, observed, strict=True):
        z = (abs(actual - expected) - 1 / (2 * n)) / math.sqrt(expected * (1 - expected) / n)
        if p_value >= alpha or z <= z_critical:
            continue
        over = actual > expected
        digits.append(d)
        excess = round((actual - expected) * n)
        ids = [e[2] for e in extra.get("top", {}).get(str(d), [])]
        findings.append(
            Finding(
                "benford_first_digit",
                "medium" if over else "low",
                ids if over else [],
                int(extra["sums"].get(str(d), 0)) if over else 0,
                f"first digit {d}: {actual:.1%} of {n} amounts, Benford expects {expected:.1%} "
                f"(z = {z:.1f}, {excess:+d} entries); distribution {conformity} (MAD {mad:.4f}), "
                + ("review the entries starting with this digit" if over else "fewer than expected"),
            )
        )
    summary = {
        "tested": n,
        "chi_square": round(chi2, 3),
        "p_value": p_value,
        "mad": round(mad, 5),
        "conformity": conformity,
        "digits": digits,
        "observed": {str(d): round(o, 4) for d, o in zip(range(1, 10), observed, strict=True)},
        "expected": {str(d): round(e, 4) for d, e in zip(range(1, 10), BENFORD, strict=True)},
    }
    return findings, summary


def _z_critical(alpha: float) -> float:
    """Two-sided normal critical value for `alpha`, by bisection on erfc."""
    low, high = 0.0, 40.0
    for _ in range(100):
        mid = (low + high) / 2
        if math.erfc(mid / math.sqrt(2)) > alpha:
            low = mid
        else:
            high = mid
    return high


benford_first_digit = audit_procedure(
    "benford_first_digit",
    """First-digit distribution of the amounts against Benford's law (chi-square, MAD, z per digit).

    Detects: a first-digit distribution that departs from Benford's law, and the digits that
    stand out. The summary has the observed and expected proportions, the chi-square statistic
    (8 degrees of freedom) and its p-value, and the mean absolute deviation (MAD) with Nigrini's
    conformity band (close <= 0.006, acceptable <= 0.012, marginal <= 0.015, else nonconformity).
    When the chi-square test rejects conformity at `alpha`, each digit whose z-statistic (with
    continuity correction) is significant at `alpha` is a finding: medium when over-represented
    (entries with that digit, largest first, up to 50 ids), low when under-represented.
    Amounts below `min_amount` (default 10) are left out, as Nigrini advises; with fewer than
    `min_entries` (default 100) amounts the test is not run.
    Ledger: path, or source and table; chunk_rows (default 250000).
    Parameters: alpha (default 0.01); min_amount (10); min_entries (100); max_findings.
    Reference: Nigrini, M. (2012), Benford's Law: Applications for Forensic Accounting,
    Auditing, and Fraud Detection, Wiley, ch. 5 and 7.
    """,
    _benford_scan,
    _benford_finish,
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
    Parameters: multiple (default 1000); min_amount (default = multiple); max_findings.
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
    Parameters: holidays (list of ISO dates, default none); max_findings.
    Reference: ISA 240 A44 and PCAOB AS 2401.61 (entries "made at unusual times"); Nigrini
    (2011), Forensic Analytics, ch. 13 (journal entry tests).
    """,
    _weekend_scan,
    _weekend_finish,
    holidays=(_is_date_list, "a list of ISO dates (YYYY-MM-DD)"),
)


# --- split_purchases -------------------------------------------------------------------------


def _split_scan(
    ledger: Ledger, parameters: dict[str, Any], where: str, args: list[Any], extra: dict[str, Any]
) -> list[Finding]:
    limit = _cents_param(parameters, "approval_limit", 10_000)
    days = int(parameters.get("days", 7))
    min_payments = int(parameters.get("min_payments", 2))
    # Vendors with a date window (peers included, so a superset of the windows below) of enough
    # small payments above the limit; the exact windows are then found in Python, per vendor.
    small = f"SELECT * FROM ledger WHERE {where} AND cents > 0 AND cents < {limit}"
    rows = (
        ledger.cursor()
        .execute(
            f"""WITH small AS ({small}),
                windows AS (SELECT vendor, sum(cents) OVER w AS total, count(*) OVER w AS n FROM small
                    WINDOW w AS (PARTITION BY vendor ORDER BY posting_date - DATE '2000-01-01'
                                 RANGE BETWEEN CURRENT ROW AND {days} FOLLOWING))
                SELECT entry_id, vendor, cents, posting_date FROM small
                WHERE vendor IN (SELECT vendor FROM windows WHERE total > {limit} AND n >= {min_payments})
                ORDER BY row_no""",
            args,
        )
        .fetchall()
    )
    by_vendor: dict[str, list[tuple[str, str, int, date]]] = defaultdict(list)
    for row in rows:
        by_vendor[row[1]].append(row)
    findings = []
    for vendor, entries in by_vendor.items():
        entries.sort(key=lambda r: (r[3], r[0]))
        dates = [r[3] for r in entries]
        start = 0
        while start < len(entries):
            first = dates[start]
            end = bisect_right(dates, first + timedelta(days=days))
            window = entries[start:end]
            total = sum(r[2] for r in window)
            if len(window) >= min_payments and total > limit:
                last = window[-1][3]
                findings.append(
                    Finding(
                        "split_purchases",
                        "high",
                        [r[0] for r in window],
                        total,
                        f"{len(window)} payments to {vendor} from {first} to {last}, each under the approval "
                        f"limit of {money(limit)}, total {money(total)}: check for a split purchase",
                    )
                )
                start = end  # one finding per window
            else:
                start += 1
    return findings


def _split_finish(
    ledger: Ledger, parameters: dict[str, Any], extra: dict[str, Any]
) -> tuple[list[Finding], dict[str, Any]]:
    return [], {
        "approval_limit": money(_cents_param(parameters, "approval_limit", 10_000)),
        "days": int(parameters.get("days", 7)),
    }


split_purchases = audit_procedure(
    "split_purchases",
    """Several payments to one vendor within a window, each under the approval limit, together above it.

    Detects: a purchase split into smaller payments so that none needs the approval the whole
    would (all positive amounts below `approval_limit` to one vendor, at least `min_payments`
    within `days` days, summing above the limit). Each window found is reported once (high).
    Ledger: path, or source and table; chunk_rows (default 250000).
    Parameters: approval_limit (default 10000); days (default 7); min_payments (default
    2); max_findings.
    Reference: ACFE Fraud Examiners Manual, "purchasing schemes: split purchases"; Nigrini
    (2011), Forensic Analytics, ch. 11.
    """,
    _split_scan,
    _split_finish,
    approval_limit=(_number(0.01, 1e12), "an amount of at least 0.01"),
    days=(_number(0, 366, whole=True), "a whole number of days between 0 and 366"),
    min_payments=(_number(2, 1000, whole=True), "a whole number between 2 and 1000"),
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
    Parameters: max_findings.
    Reference: COSO Internal Control - Integrated Framework (2013), principle 10 (segregation
    of duties); ISA 315 (revised 2019) appendix 3.
    """,
    _duties_scan,
    _duties_finish,
)


# --- outliers --------------------------------------------------------------------------------


def _outliers_scan(
    ledger: Ledger, parameters: dict[str, Any], where: str, args: list[Any], extra: dict[str, Any]
) -> list[Finding]:
    by = str(parameters.get("by", "vendor"))
    threshold = float(parameters.get("threshold", 3.5))
    min_entries = int(parameters.get("min_entries", 8))
    log = parameters.get("scale", "log") == "log"
    value = "log10(abs(cents))" if log else "cents / 100"
    stats = f"""WITH v AS (SELECT row_no, entry_id, {by} AS grp, cents, posting_date, {value} AS x
                          FROM ledger WHERE {where} AND cents <> 0),
                g AS (SELECT grp, median(x) AS center, count(*) AS n FROM v GROUP BY grp
                      HAVING count(*) >= {min_entries}),
                m AS (SELECT grp, median(abs(x - center)) AS mad FROM v JOIN g USING (grp) GROUP BY grp),
                s AS (SELECT grp, center, n, mad FROM g JOIN m USING (grp) WHERE mad <> 0)"""
    cursor = ledger.cursor()
    assessed = cursor.execute(f"{stats} SELECT count(*) FROM s", args).fetchone()
    extra["groups_assessed"] = extra.get("groups_assessed", 0) + (int(assessed[0]) if assessed else 0)
    rows = cursor.execute(
        f"""{stats} SELECT entry_id, cents, posting_date, grp, center, n, score FROM (
                SELECT v.*, s.center, s.n, 0.6745 * (x - center) / mad AS score FROM v JOIN s USING (grp))
            WHERE abs(score) > {threshold!r} ORDER BY row_no""",
        args,
    ).fetchall()
    findings = []
    for entry_id, cents, day, group, center, n, score in rows:
        typical = 10**center if log else center * 100  # cents
        findings.append(
            Finding(
                "outliers",
                "high" if abs(score) > 2 * threshold else "medium",
                [entry_id],
                cents,
                f"{money(cents)} on {day} is far from {by} {group}'s usual "
                f"{money(round(typical))} (robust z = {score:+.1f}, {n} entries): verify it",
            )
        )
    return findings


def _outliers_finish(
    ledger: Ledger, parameters: dict[str, Any], extra: dict[str, Any]
) -> tuple[list[Finding], dict[str, Any]]:
    summary = {
        "by": str(parameters.get("by", "vendor")),
        "groups_assessed": extra.get("groups_assessed", 0),
        "threshold": float(parameters.get("threshold", 3.5)),
    }
    return [], summary


outliers = audit_procedure(
    "outliers",
    """Amounts far outside a vendor's (or account's) usual range, by robust z-score.

    Detects: entries whose modified z-score 0.6745 (x - median) / MAD within their group
    (`by`: vendor or account) exceeds `threshold`. The median and the median absolute
    deviation are not moved by the outliers themselves, unlike mean and standard deviation.
    With `scale` "log" (default) x is log10 of the absolute amount, which suits amounts that
    spread over orders of magnitude. Groups with fewer than `min_entries` non-zero amounts, or
    a MAD of 0, are skipped. Severity high beyond twice the threshold, medium otherwise.
    Ledger: path, or source and table; chunk_rows (default 250000).
    Parameters: by (default "vendor"); threshold (3.5); min_entries (8); scale ("log");
    max_findings.
    Reference: Iglewicz, B. and Hoaglin, D. (1993), How to Detect and Handle Outliers, ASQC
    (the modified z-score and the 3.5 cut-off).
    """,
    _outliers_scan,
    _outliers_finish,
    key=lambda parameters: str(parameters.get("by", "vendor")),
    by=(lambda v: v in ("vendor", "account"), 'either "vendor" or "account"'),
    threshold=(_number(1, 100), "a number between 1 and 100"),
    min_entries=(_number(3, 1e9, whole=True), "a whole number of at least 3"),
    scale=(lambda v: v in ("log", "linear"), 'either "log" or "linear"'),
)

"""Built-in audit procedures over a CSV ledger of journal entries or payments.

Every procedure reads the ledger named by the `path` parameter (columns `entry_id,
posting_date, vendor, account, amount, currency, description, created_by, approved_by`) and
returns

    {"findings": [{"procedure", "severity", "entry_ids", "amount", "explanation"}, ...],
     "summary": {"entries", "findings", "shown", "amount_at_stake", ...}}

Findings are ordered by severity (high, medium, low), then by amount at stake; at most
`max_findings` (default 200) are returned, and `summary.findings` counts them all. Amounts are
decimal strings, as in the ledger. A ledger that cannot be read (missing file or columns, an
amount or date that does not parse, no rows, not UTF-8) fails the run with a `CriticalError`
that names the file, the line and the problem. The parameters are checked at `CreateWorkflow`
(see each procedure's `validate`), including that the file exists and has the columns.

The methods, their parameters and references are in docs/procedures.md.
"""

from __future__ import annotations

import csv
import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from statistics import median
from typing import Any

from auditflow.errors import FieldViolation
from auditflow.procedures import CriticalError, register

COLUMNS = (
    "entry_id",
    "posting_date",
    "vendor",
    "account",
    "amount",
    "currency",
    "description",
    "created_by",
    "approved_by",
)
SEVERITIES = ("high", "medium", "low")
DEFAULT_MAX_FINDINGS = 200
HEADER_BYTES = 64 * 1024


# --- the ledger ------------------------------------------------------------------------------


@dataclass
class Ledger:
    """A ledger read column by column; amounts in cents (int), dates as `date`."""

    path: Path
    entry_id: list[str] = field(default_factory=list)
    posting_date: list[date] = field(default_factory=list)
    vendor: list[str] = field(default_factory=list)
    account: list[str] = field(default_factory=list)
    cents: list[int] = field(default_factory=list)
    currency: list[str] = field(default_factory=list)
    description: list[str] = field(default_factory=list)
    created_by: list[str] = field(default_factory=list)
    approved_by: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entry_id)


def read_ledger(path: str | Path) -> Ledger:
    """Read and check a whole CSV ledger; any problem is a `CriticalError` that says where."""
    path = Path(path)
    ledger = Ledger(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise CriticalError(f"{path}: the ledger is empty (no header line)")
            index = _column_index(header, path)
            width = len(header)
            cols = [index[c] for c in COLUMNS]
            (i_id, i_date, i_vendor, i_account, i_amount, i_currency, i_desc, i_created, i_approved) = cols
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) != width:
                    raise CriticalError(f"{path}:{line}: expected {width} fields, found {len(row)}")
                ledger.entry_id.append(row[i_id])
                ledger.posting_date.append(_date(row[i_date], path, line))
                ledger.vendor.append(row[i_vendor] or "(none)")
                ledger.account.append(row[i_account])
                ledger.cents.append(_cents(row[i_amount], path, line))
                ledger.currency.append(row[i_currency])
                ledger.description.append(row[i_desc])
                ledger.created_by.append(row[i_created])
                ledger.approved_by.append(row[i_approved])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CriticalError(f"{path}: cannot read the ledger: {exc}") from exc
    if not ledger:
        raise CriticalError(f"{path}: the ledger has no entries (a header line only)")
    return ledger


def _column_index(header: list[str], path: Path) -> dict[str, int]:
    names = [name.strip().lstrip("\ufeff") for name in header]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise CriticalError(f"{path}: missing columns: {', '.join(missing)} (found: {', '.join(names) or 'none'})")
    return {name: names.index(name) for name in COLUMNS}


def _cents(text: str, path: Path, line: int) -> int:
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, AttributeError) as exc:
        raise CriticalError(f"{path}:{line}: amount {text!r} is not a number") from exc
    if not value.is_finite():
        raise CriticalError(f"{path}:{line}: amount {text!r} is not a number")
    return int((value * 100).to_integral_value())


def _date(text: str, path: Path, line: int) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError as exc:
        raise CriticalError(f"{path}:{line}: posting_date {text!r} is not an ISO date (YYYY-MM-DD)") from exc


def money(cents: int) -> str:
    """Cents as a decimal string: 123456 -> '1234.56', -5 -> '-0.05'."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"


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


def _result(ledger: Ledger, findings: list[Finding], max_findings: int, **summary: Any) -> dict[str, Any]:
    ordered = sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), -abs(f.cents), f.entry_ids))
    by_severity = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
    return {
        "findings": [f.to_json() for f in ordered[:max_findings]],
        "summary": {
            "entries": len(ledger),
            "findings": len(findings),
            "shown": min(len(findings), max_findings),
            "by_severity": by_severity,
            "amount_at_stake": money(sum(abs(f.cents) for f in findings)),
            **summary,
        },
    }


# --- parameter checks ------------------------------------------------------------------------

Check = Callable[[Any], bool]


def _number(low: float, high: float, *, whole: bool = False) -> Check:
    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        return (not whole or value == int(value)) and low <= value <= high

    return check


def _ledger_violations(parameters: dict[str, Any]) -> Iterator[FieldViolation]:
    path = parameters.get("path")
    if not isinstance(path, str) or not path:
        yield FieldViolation("parameters.path", "required: the path of a CSV ledger")
        return
    file = Path(path)
    if not file.is_file():
        yield FieldViolation("parameters.path", f"no such file: {path}")
        return
    try:
        with file.open("rb") as handle:
            first = handle.readline(HEADER_BYTES)
    except OSError as exc:
        yield FieldViolation("parameters.path", f"cannot read {path}: {exc.strerror or exc}")
        return
    try:
        header = next(csv.reader([first.decode("utf-8")]), [])
    except UnicodeDecodeError:
        yield FieldViolation("parameters.path", f"{path} is not a UTF-8 CSV file")
        return
    if not header:
        yield FieldViolation("parameters.path", f"{path} is empty: expected a header line with {', '.join(COLUMNS)}")
        return
    names = {name.strip().lstrip("\ufeff") for name in header}
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        yield FieldViolation("parameters.path", f"{path}: missing columns: {', '.join(missing)}")


def validator(**checks: tuple[Check, str]) -> Callable[[dict[str, Any]], Iterator[FieldViolation]]:
    """A `validate` for a procedure: the ledger path, then each named parameter (all optional)."""
    allowed = {"path", "max_findings", *checks}
    every = {"max_findings": (_number(1, 100_000, whole=True), "a whole number between 1 and 100000"), **checks}

    def validate(parameters: dict[str, Any]) -> Iterator[FieldViolation]:
        yield from _ledger_violations(parameters)
        unknown = set(parameters) - allowed
        if unknown:
            yield FieldViolation("parameters", f"unknown parameters: {', '.join(sorted(unknown))}")
        for name, (check, expected) in every.items():
            if name in parameters and not check(parameters[name]):
                yield FieldViolation(f"parameters.{name}", expected)

    return validate


def _max_findings(parameters: dict[str, Any]) -> int:
    return int(parameters.get("max_findings", DEFAULT_MAX_FINDINGS))


def _cents_param(parameters: dict[str, Any], name: str, default: float) -> int:
    return int((Decimal(str(parameters.get(name, default))) * 100).to_integral_value())


def _by(keys: Iterable[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    return groups


# --- duplicate_payments ----------------------------------------------------------------------


@register(
    "duplicate_payments",
    validate=validator(
        days=(_number(0, 366, whole=True), "a whole number of days between 0 and 366"),
        tolerance=(_number(0, 0.5), "a fraction between 0 and 0.5 (0.01 = 1 %)"),
    ),
)
def duplicate_payments(parameters: dict[str, Any]) -> dict[str, Any]:
    """Payments to one vendor of the same amount within N days (exact and near-duplicates).

    Detects: two or more entries with the same vendor and amount posted at most `days` apart.
    Severity high when they also share the description (the same invoice paid twice: an exact
    duplicate), medium otherwise (a near-duplicate: same payee and amount, other reference).
    With `tolerance` > 0, amounts within that fraction of each other count as the same.
    Parameters: path; days (default 7); tolerance (default 0); max_findings (default 200).
    Reference: ACFE Fraud Examiners Manual, "duplicate payments"; Nigrini (2011), Forensic
    Analytics, ch. 11 ("same-same-same" and "same-same-different" tests).
    """
    ledger = read_ledger(parameters["path"])
    days = int(parameters.get("days", 7))
    tolerance = float(parameters.get("tolerance", 0))
    findings = []
    for vendor, rows in _by(ledger.vendor).items():
        rows.sort(key=lambda i: (ledger.cents[i], ledger.posting_date[i], ledger.entry_id[i]))
        amounts = [ledger.cents[i] for i in rows]
        used: set[int] = set()
        for a, i in enumerate(rows):
            if i in used or ledger.cents[i] == 0:
                continue
            high = ledger.cents[i] + abs(ledger.cents[i]) * tolerance
            group = [i]
            for j in rows[a + 1 : bisect_right(amounts, math.floor(high))]:
                gap = abs((ledger.posting_date[j] - ledger.posting_date[i]).days)
                if j not in used and gap <= days:
                    group.append(j)
            if len(group) < 2:
                continue
            used.update(group)
            exact = len({ledger.description[k] for k in group}) < len(group)
            same = len({ledger.cents[k] for k in group}) == 1
            extra = sum(ledger.cents[k] for k in group[1:])
            span = (max(ledger.posting_date[k] for k in group) - min(ledger.posting_date[k] for k in group)).days
            kind = "exact duplicate (same description)" if exact else "possible duplicate"
            amount = money(ledger.cents[i]) if same else f"about {money(ledger.cents[i])}"
            findings.append(
                Finding(
                    "duplicate_payments",
                    "high" if exact else "medium",
                    [ledger.entry_id[k] for k in group],
                    extra,
                    f"{kind}: {len(group)} payments of {amount} to {vendor} within {span} day(s); "
                    f"check that {money(extra)} was not paid twice",
                )
            )
    return _result(ledger, findings, _max_findings(parameters), days=days, tolerance=tolerance)


# --- benford_first_digit ---------------------------------------------------------------------

BENFORD = [math.log10(1 + 1 / d) for d in range(1, 10)]
# Nigrini (2012), Benford's Law, table 7.1: first-digit MAD conformity ranges.
MAD_BANDS = ((0.006, "close conformity"), (0.012, "acceptable conformity"), (0.015, "marginal conformity"))


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


@register(
    "benford_first_digit",
    validate=validator(
        alpha=(_number(1e-9, 0.2), "a significance level between 1e-9 and 0.2"),
        min_amount=(_number(0, 1e12), "an amount of at least 0"),
        min_entries=(_number(10, 1e9, whole=True), "a whole number of at least 10"),
    ),
)
def benford_first_digit(parameters: dict[str, Any]) -> dict[str, Any]:
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
    Parameters: path; alpha (default 0.01); min_amount (10); min_entries (100); max_findings.
    Reference: Nigrini, M. (2012), Benford's Law: Applications for Forensic Accounting,
    Auditing, and Fraud Detection, Wiley, ch. 5 and 7.
    """
    ledger = read_ledger(parameters["path"])
    alpha = float(parameters.get("alpha", 0.01))
    floor = _cents_param(parameters, "min_amount", 10)
    min_entries = int(parameters.get("min_entries", 100))
    by_digit: dict[int, list[int]] = defaultdict(list)
    for i, cents in enumerate(ledger.cents):
        if abs(cents) >= max(floor, 1):
            by_digit[first_digit(cents)].append(i)
    n = sum(len(rows) for rows in by_digit.values())
    if n < min_entries:
        summary = {"tested": n, "skipped": f"fewer than {min_entries} amounts of at least {money(floor)}"}
        return _result(ledger, [], _max_findings(parameters), **summary)
    observed = [len(by_digit[d]) / n for d in range(1, 10)]
    chi2 = sum((len(by_digit[d]) - n * p) ** 2 / (n * p) for d, p in zip(range(1, 10), BENFORD, strict=True))
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
        rows = sorted(by_digit[d], key=lambda i: -abs(ledger.cents[i]))
        over = actual > expected
        digits.append(d)
        excess = round((actual - expected) * n)
        findings.append(
            Finding(
                "benford_first_digit",
                "medium" if over else "low",
                [ledger.entry_id[i] for i in rows[:50]] if over else [],
                sum(ledger.cents[i] for i in rows) if over else 0,
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
    return _result(ledger, findings, _max_findings(parameters), **summary)


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


# --- round_amounts ---------------------------------------------------------------------------


@register(
    "round_amounts",
    validate=validator(
        multiple=(_number(0.01, 1e12), "an amount of at least 0.01"),
        min_amount=(_number(0, 1e12), "an amount of at least 0"),
    ),
)
def round_amounts(parameters: dict[str, Any]) -> dict[str, Any]:
    """Amounts that are exact multiples of a round figure (estimates, plugs, made-up invoices).

    Detects: entries whose absolute amount is an exact multiple of `multiple` (default 1000)
    and at least `min_amount` (default: the multiple). Severity medium for multiples of ten
    times `multiple`, low otherwise.
    Parameters: path; multiple (default 1000); min_amount (default = multiple); max_findings.
    Reference: Nigrini (2011), Forensic Analytics, ch. 8 ("round numbers test"); ISA 240
    A44 / AS 2401.61 (journal entries with round numbers or consistent ending digits).
    """
    ledger = read_ledger(parameters["path"])
    multiple = _cents_param(parameters, "multiple", 1000)
    floor = _cents_param(parameters, "min_amount", parameters.get("multiple", 1000))
    findings = []
    for i, cents in enumerate(ledger.cents):
        value = abs(cents)
        if value and value >= floor and value % multiple == 0:
            findings.append(
                Finding(
                    "round_amounts",
                    "medium" if value % (10 * multiple) == 0 else "low",
                    [ledger.entry_id[i]],
                    cents,
                    f"{money(cents)} to {ledger.vendor[i]} on {ledger.posting_date[i]} is a multiple of "
                    f"{money(multiple)}: ask for the invoice or the basis of the estimate",
                )
            )
    return _result(ledger, findings, _max_findings(parameters), multiple=money(multiple))


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


@register(
    "weekend_postings",
    validate=validator(holidays=(_is_date_list, "a list of ISO dates (YYYY-MM-DD)")),
)
def weekend_postings(parameters: dict[str, Any]) -> dict[str, Any]:
    """Entries posted on a Saturday, a Sunday or a listed holiday.

    Detects: postings on days the business is closed, when nobody should be booking. Severity
    medium on a holiday, low on a weekend.
    Parameters: path; holidays (list of ISO dates, default none); max_findings.
    Reference: ISA 240 A44 and PCAOB AS 2401.61 (entries "made at unusual times"); Nigrini
    (2011), Forensic Analytics, ch. 13 (journal entry tests).
    """
    ledger = read_ledger(parameters["path"])
    holidays = {date.fromisoformat(d) for d in parameters.get("holidays", [])}
    findings = []
    weekend = holiday = 0
    for i, day in enumerate(ledger.posting_date):
        if day in holidays:
            holiday += 1
            severity, why = "medium", "a holiday"
        elif day.weekday() >= 5:
            weekend += 1
            severity, why = "low", f"a {day.strftime('%A')}"
        else:
            continue
        findings.append(
            Finding(
                "weekend_postings",
                severity,
                [ledger.entry_id[i]],
                ledger.cents[i],
                f"posted on {why} ({day}) by {ledger.created_by[i] or 'unknown'}: "
                f"{money(ledger.cents[i])} to {ledger.vendor[i]}; confirm it was authorised",
            )
        )
    summary = {"weekend": weekend, "holiday": holiday, "holidays_listed": len(holidays)}
    return _result(ledger, findings, _max_findings(parameters), **summary)


# --- split_purchases -------------------------------------------------------------------------


@register(
    "split_purchases",
    validate=validator(
        approval_limit=(_number(0.01, 1e12), "an amount of at least 0.01"),
        days=(_number(0, 366, whole=True), "a whole number of days between 0 and 366"),
        min_payments=(_number(2, 1000, whole=True), "a whole number between 2 and 1000"),
    ),
)
def split_purchases(parameters: dict[str, Any]) -> dict[str, Any]:
    """Several payments to one vendor within a window, each under the approval limit, together above it.

    Detects: a purchase split into smaller payments so that none needs the approval the whole
    would (all positive amounts below `approval_limit` to one vendor, at least `min_payments`
    within `days` days, summing above the limit). Each window found is reported once (high).
    Parameters: path; approval_limit (default 10000); days (default 7); min_payments (default
    2); max_findings.
    Reference: ACFE Fraud Examiners Manual, "purchasing schemes: split purchases"; Nigrini
    (2011), Forensic Analytics, ch. 11.
    """
    ledger = read_ledger(parameters["path"])
    limit = _cents_param(parameters, "approval_limit", 10_000)
    days = int(parameters.get("days", 7))
    min_payments = int(parameters.get("min_payments", 2))
    findings = []
    for vendor, rows in _by(ledger.vendor).items():
        small = sorted(
            (i for i in rows if 0 < ledger.cents[i] < limit), key=lambda i: (ledger.posting_date[i], ledger.entry_id[i])
        )
        dates = [ledger.posting_date[i] for i in small]
        start = 0
        while start < len(small):
            first = dates[start]
            end = bisect_right(dates, first + timedelta(days=days))
            window = small[start:end]
            total = sum(ledger.cents[i] for i in window)
            if len(window) >= min_payments and total > limit:
                last = ledger.posting_date[window[-1]]
                findings.append(
                    Finding(
                        "split_purchases",
                        "high",
                        [ledger.entry_id[i] for i in window],
                        total,
                        f"{len(window)} payments to {vendor} from {first} to {last}, each under the approval "
                        f"limit of {money(limit)}, total {money(total)}: check for a split purchase",
                    )
                )
                start = end  # one finding per window
            else:
                start += 1
    return _result(ledger, findings, _max_findings(parameters), approval_limit=money(limit), days=days)


# --- segregation_of_duties -------------------------------------------------------------------


@register("segregation_of_duties", validate=validator())
def segregation_of_duties(parameters: dict[str, Any]) -> dict[str, Any]:
    """Entries created and approved by the same person, or never approved.

    Detects: a breach of the four-eyes principle. Severity high when the creator approved
    their own entry (names compared without case or surrounding spaces), medium when the
    approver is missing.
    Parameters: path; max_findings.
    Reference: COSO Internal Control - Integrated Framework (2013), principle 10 (segregation
    of duties); ISA 315 (revised 2019) appendix 3.
    """
    ledger = read_ledger(parameters["path"])
    findings = []
    per_person: dict[str, int] = defaultdict(int)
    for i, (creator, approver) in enumerate(zip(ledger.created_by, ledger.approved_by, strict=True)):
        who = creator.strip()
        if not approver.strip():
            severity, why = "medium", f"created by {who or 'unknown'} and never approved"
        elif who.casefold() == approver.strip().casefold():
            severity, why = "high", f"created and approved by {who}"
            per_person[who] += 1
        else:
            continue
        findings.append(
            Finding(
                "segregation_of_duties",
                severity,
                [ledger.entry_id[i]],
                ledger.cents[i],
                f"{money(ledger.cents[i])} to {ledger.vendor[i]} on {ledger.posting_date[i]} {why}: "
                "have someone else review it",
            )
        )
    return _result(ledger, findings, _max_findings(parameters), self_approved_by=dict(sorted(per_person.items())))


# --- outliers --------------------------------------------------------------------------------


@register(
    "outliers",
    validate=validator(
        by=(lambda v: v in ("vendor", "account"), 'either "vendor" or "account"'),
        threshold=(_number(1, 100), "a number between 1 and 100"),
        min_entries=(_number(3, 1e9, whole=True), "a whole number of at least 3"),
        scale=(lambda v: v in ("log", "linear"), 'either "log" or "linear"'),
    ),
)
def outliers(parameters: dict[str, Any]) -> dict[str, Any]:
    """Amounts far outside a vendor's (or account's) usual range, by robust z-score.

    Detects: entries whose modified z-score 0.6745 (x - median) / MAD within their group
    (`by`: vendor or account) exceeds `threshold`. The median and the median absolute
    deviation are not moved by the outliers themselves, unlike mean and standard deviation.
    With `scale` "log" (default) x is log10 of the absolute amount, which suits amounts that
    spread over orders of magnitude. Groups with fewer than `min_entries` non-zero amounts, or
    a MAD of 0, are skipped. Severity high beyond twice the threshold, medium otherwise.
    Parameters: path; by (default "vendor"); threshold (3.5); min_entries (8); scale ("log");
    max_findings.
    Reference: Iglewicz, B. and Hoaglin, D. (1993), How to Detect and Handle Outliers, ASQC
    (the modified z-score and the 3.5 cut-off).
    """
    ledger = read_ledger(parameters["path"])
    by = str(parameters.get("by", "vendor"))
    threshold = float(parameters.get("threshold", 3.5))
    min_entries = int(parameters.get("min_entries", 8))
    log = parameters.get("scale", "log") == "log"
    keys = ledger.vendor if by == "vendor" else ledger.account
    findings = []
    assessed = 0
    for key, rows in _by(keys).items():
        rows = [i for i in rows if ledger.cents[i]]
        if len(rows) < min_entries:
            continue
        values = [math.log10(abs(ledger.cents[i])) if log else ledger.cents[i] / 100 for i in rows]
        center = median(values)
        mad = median(abs(v - center) for v in values)
        if mad == 0:
            continue
        assessed += 1
        typical = 10**center if log else center * 100  # cents
        for i, value in zip(rows, values, strict=True):
            score = 0.6745 * (value - center) / mad
            if abs(score) <= threshold:
                continue
            findings.append(
                Finding(
                    "outliers",
                    "high" if abs(score) > 2 * threshold else "medium",
                    [ledger.entry_id[i]],
                    ledger.cents[i],
                    f"{money(ledger.cents[i])} on {ledger.posting_date[i]} is far from {by} {key}'s usual "
                    f"{money(round(typical))} (robust z = {score:+.1f}, {len(rows)} entries): verify it",
                )
            )
    summary = {"by": by, "groups_assessed": assessed, "threshold": threshold}
    return _result(ledger, findings, _max_findings(parameters), **summary)

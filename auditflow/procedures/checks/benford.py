"""benford_first_digit: the leading digits of the amounts against Benford's law (Nigrini).

Each chunk counts its amounts per first two digits and magnitude; the test itself
(`auditflow.procedures.stats`) runs once, at the end, on the counts of the whole ledger, and
one query then finds the largest entries of the band where each flagged digit's excess lies.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TypedDict

from auditflow.procedures import stats
from auditflow.procedures.checks.base import (
    AMOUNT,
    AuditProcedure,
    Finding,
    Parameters,
    Rows,
    audit_procedure,
    cents,
    fetch,
    number,
    one_of,
)
from auditflow.procedures.table import Ledger, money

NAME = "benford_first_digit"
BENFORD_IDS = 50  # entries a Benford finding lists


@dataclass(frozen=True)
class BenfordRule:
    width: int  # leading digits tested: 1 or 2
    alpha: float
    min_amount: int  # cents: smaller amounts are left out
    min_entries: int  # fewer amounts: the test is not run

    @classmethod
    def of(cls, parameters: Parameters) -> BenfordRule:
        return cls(
            int(parameters.get("leading_digits", 1)),
            float(parameters.get("alpha", 0.01)),
            cents(parameters, "min_amount", 10),
            int(parameters.get("min_entries", 100)),
        )


class DigitCounts(TypedDict, total=False):
    # per first two digits, per magnitude (digits of the amount in cents): [count, sum in cents]
    cells: dict[str, dict[str, list[int]]]


def scan(ledger: Ledger, rule: BenfordRule, rows: Rows, own: DigitCounts) -> list[Finding]:
    """Count the chunk's amounts per first two digits and magnitude (the first-digit test
    folds the pairs); the test itself runs once, at the end, on the counts of the whole."""
    found = fetch(
        ledger,
        f"""SELECT CAST(left(rpad(text, 2, '0'), 2) AS INTEGER), length(text), count(*), sum(value)
            FROM (SELECT abs(cents) AS value, CAST(abs(cents) AS VARCHAR) AS text FROM ledger
                  WHERE {rows.where} AND abs(cents) >= {max(rule.min_amount, 1)})
            GROUP BY ALL""",
        rows.args,
    )
    for pair, magnitude, count, total in found:
        cell = own.setdefault("cells", {}).setdefault(str(pair), {}).setdefault(str(magnitude), [0, 0])
        cell[0] += int(count)
        cell[1] += int(total)
    return []


def _cells(own: DigitCounts, width: int) -> dict[int, dict[int, tuple[int, int]]]:
    """The counts kept in the state (JSON), as the test reads them, folded to `width` digits."""
    pairs = {int(p): {int(m): (c, t) for m, (c, t) in ms.items()} for p, ms in own.get("cells", {}).items()}
    return stats.fold(pairs, width)


def finish(ledger: Ledger, rule: BenfordRule, own: DigitCounts) -> tuple[list[Finding], dict[str, object]]:
    cells = _cells(own, rule.width)
    counts = {d: sum(c for c, _ in by_magnitude.values()) for d, by_magnitude in cells.items()}
    n = sum(counts.values())
    if n < rule.min_entries:
        skipped = f"fewer than {rule.min_entries} amounts of at least {money(rule.min_amount)}"
        return [], {"tested": n, "skipped": skipped}
    test = stats.benford_test(counts, rule.width, rule.alpha)
    bounds = {r.digits: _excess_bounds(r, test, cells) for r in test.flagged}
    ranked = _largest_in(ledger, bounds, {r.digits: min(math.ceil(r.excess), BENFORD_IDS) for r in test.flagged})
    findings = [_finding(r, test, cells, bounds[r.digits], ranked.get(r.digits, [])) for r in test.flagged]
    return findings, _summary(test)


def _summary(test: stats.BenfordResult) -> dict[str, object]:
    return {
        "test": stats.TEST_NAMES[test.width],
        "tested": test.n,
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
    found = fetch(
        ledger,
        f"""WITH band(digits, low, high, k) AS (VALUES {values})
            SELECT digits, entry_id FROM ledger JOIN band ON abs(cents) BETWEEN low AND high
            QUALIFY row_number() OVER (PARTITION BY digits ORDER BY abs(cents) DESC, row_no) <= k
            ORDER BY digits, abs(cents) DESC, row_no""",
    )
    ranked: dict[int, list[str]] = defaultdict(list)
    for digits, entry_id in found:
        ranked[int(digits)].append(entry_id)
    return ranked


def _finding(
    result: stats.DigitResult,
    test: stats.BenfordResult,
    cells: stats.Cells,
    bounds: tuple[int, int],
    entries: list[str],
) -> Finding:
    value = stats.excess_value(result, cells)
    band = f"{money(bounds[0])} to {money(bounds[1])}"
    return Finding(
        NAME,
        test.severity(result),
        entries,
        value,
        f"{stats.TEST_NAMES[test.width]} {result.digits}: {result.actual:.2%} of {result.n} amounts, Benford expects "
        f"{result.expected:.2%} (z = {result.z:.1f}), {round(result.excess)} entries too many, most from "
        f"{band}: about {money(value)} at their average there; {test.conformity} (MAD {test.mad:.4f}). "
        f"Entries shown: the largest from {band}",
    )


benford_first_digit = audit_procedure(
    NAME,
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
    AuditProcedure(BenfordRule.of, scan, finish),
    leading_digits=(one_of(1, 2), "1 (first digit) or 2 (first two)"),
    alpha=(number(1e-9, 0.2), "a significance level between 1e-9 and 0.2"),
    min_amount=AMOUNT,
    min_entries=(number(10, 1e9, whole=True), "a whole number of at least 10"),
)

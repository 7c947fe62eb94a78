"""outliers: amounts far from a vendor's (or account's) usual range, by robust z-score.

SQL computes each group's median and MAD once, then returns the entries beyond their group's
threshold; the thresholds are `auditflow.procedures.outlier_stats`, set by the number of
entries the whole ledger tests (counted on the first chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import NamedTuple, TypedDict

from auditflow.procedures.checks.base import (
    AuditProcedure,
    Finding,
    Parameters,
    Rows,
    audit_procedure,
    fetch,
    number,
    one_of,
)
from auditflow.procedures.outlier_stats import MODIFIED_Z, SIDES, may_exceed, outlier_severity, outlier_threshold
from auditflow.procedures.table import Ledger, money

NAME = "outliers"
BEYOND = {"high": "score > lim", "low": "score < -lim", "both": "abs(score) > lim"}


@dataclass(frozen=True)
class OutlierRule:
    by: str  # the column that groups the entries: vendor or account
    alpha: float  # the chance of any false alarm over the ledger
    threshold: float | None  # a fixed threshold, instead of one set by alpha
    side: str  # high, low or both
    min_entries: int  # smaller groups are skipped
    log: bool  # score log10 of the amounts (else the amounts)

    @classmethod
    def of(cls, parameters: Parameters) -> OutlierRule:
        threshold = parameters.get("threshold")
        return cls(
            str(parameters.get("by", "vendor")),
            float(parameters.get("alpha", 0.05)),
            None if threshold is None else float(threshold),
            str(parameters.get("side", "high")),
            int(parameters.get("min_entries", 8)),
            parameters.get("scale", "log") == "log",
        )


class Tested(TypedDict, total=False):
    tests: int  # the entries the whole ledger tests, counted on the first chunk
    groups_assessed: int


def _tests(ledger: Ledger, rule: OutlierRule) -> int:
    """The entries the whole ledger will test: non-zero amounts in groups of at least min_entries."""
    found = fetch(
        ledger,
        f"""SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM ledger WHERE cents <> 0 GROUP BY {rule.by})
            WHERE n >= {rule.min_entries}""",
    )
    return int(found[0][0]) if found else 0


def _limit(ledger: Ledger, rule: OutlierRule, own: Tested) -> Callable[[int | None], float]:
    """group size (None: a large group, the lowest threshold) -> threshold: the one given, or
    set by the number of tests, counted on the first chunk."""
    fixed = rule.threshold
    if fixed is not None:
        return lambda group: fixed
    if "tests" not in own:
        own["tests"] = _tests(ledger, rule)
    tests = own["tests"]
    return lambda group: outlier_threshold(tests, rule.alpha, rule.side, group)


def scan(ledger: Ledger, rule: OutlierRule, rows: Rows, own: Tested) -> list[Finding]:
    limit = _limit(ledger, rule, own)
    value = "log10(abs(cents))" if rule.log else "cents / 100"
    values = f"""SELECT row_no, entry_id, {rule.by} AS grp, cents, posting_date, {value} AS x
                 FROM ledger WHERE {rows.where} AND cents <> 0"""
    # The median and MAD of each group, once, with its highest and lowest score (computed as the
    # entries' scores are, so equal to them); then the entries beyond their group's threshold.
    groups = fetch(
        ledger,
        f"""WITH v AS ({values}),
                g AS (SELECT grp, median(x) AS center, count(*) AS n, max(x) AS hi, min(x) AS lo FROM v
                      GROUP BY grp HAVING count(*) >= {rule.min_entries}),
                m AS (SELECT grp, median(abs(x - center)) AS mad FROM v JOIN g USING (grp) GROUP BY grp)
            SELECT grp, center, n, mad, {MODIFIED_Z} * (hi - center) / mad, {MODIFIED_Z} * (lo - center) / mad
            FROM g JOIN m USING (grp) WHERE mad <> 0""",
        rows.args,
    )
    own["groups_assessed"] = own.get("groups_assessed", 0) + len(groups)
    # Only a group with a score beyond the lowest threshold may have an outlier: the others' own
    # thresholds (Student t, costly for each group size) are never needed. The floor is taken a
    # hair lower, so that the rounding of a group's threshold never puts it below the floor.
    floor = limit(None) * (1 - 1e-9)
    groups = [group[:4] for group in groups if may_exceed(group[4], group[5], floor, rule.side)]
    columns = [list(column) for column in zip(*groups, strict=True)] or [[], [], [], []]
    found = fetch(
        ledger,
        f"""WITH v AS ({values}),
                s AS (SELECT unnest(CAST(? AS VARCHAR[])) AS grp, unnest(CAST(? AS DOUBLE[])) AS center,
                             unnest(CAST(? AS BIGINT[])) AS n, unnest(CAST(? AS DOUBLE[])) AS mad,
                             unnest(CAST(? AS DOUBLE[])) AS lim)
            SELECT entry_id, cents, posting_date, grp, center, n, score, lim FROM (
                SELECT v.*, s.center, s.n, s.lim, {MODIFIED_Z} * (x - center) / mad AS score FROM v JOIN s USING (grp))
            WHERE {BEYOND[rule.side]} ORDER BY row_no""",
        [*rows.args, *columns, [limit(int(n)) for n in columns[2]]],
    )
    return [_finding(rule, Outlier._make(row)) for row in found]


class Outlier(NamedTuple):
    entry_id: str
    cents: int
    day: date
    group: str  # the vendor or account
    center: float  # the group's median (of log10 cents, or of amounts)
    n: int  # the group's entries
    score: float  # the modified z
    limit: float  # the group's threshold


def _finding(rule: OutlierRule, entry: Outlier) -> Finding:
    typical = 10**entry.center if rule.log else entry.center * 100  # cents
    side = "above" if entry.score > 0 else "below"
    return Finding(
        NAME,
        outlier_severity(entry.score, entry.limit),
        [entry.entry_id],
        entry.cents,
        f"{money(entry.cents)} on {entry.day} is far {side} {rule.by} {entry.group}'s usual "
        f"{money(round(typical))} (robust z = {entry.score:+.1f}, beyond {entry.limit:.2f} for {entry.n} entries): "
        "verify it",
    )


def finish(ledger: Ledger, rule: OutlierRule, own: Tested) -> tuple[list[Finding], dict[str, object]]:
    summary: dict[str, object] = {
        "by": rule.by,
        "groups_assessed": own.get("groups_assessed", 0),
        "side": rule.side,
        "threshold": round(_limit(ledger, rule, own)(None), 3),
    }
    if rule.threshold is None:
        summary |= {"tests": own["tests"], "alpha": rule.alpha}
    return [], summary


outliers = audit_procedure(
    NAME,
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
    AuditProcedure(OutlierRule.of, scan, finish, key=lambda rule: rule.by),
    by=(one_of("vendor", "account"), 'either "vendor" or "account"'),
    alpha=(number(1e-9, 0.5), "a false-alarm rate between 1e-9 and 0.5"),
    threshold=(number(1, 100), "a number between 1 and 100"),
    side=(one_of(*SIDES), 'one of "high", "low", "both"'),
    min_entries=(number(3, 1e9, whole=True), "a whole number of at least 3"),
    scale=(one_of("log", "linear"), 'either "log" or "linear"'),
)

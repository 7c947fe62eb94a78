"""Benford's law as Nigrini tests it, checked against benford_py on the same amounts.

Ledgers of 5 000 to 1 000 000 entries: clean ones draw amounts log-uniformly over five
decades (Benford's law holds exactly in expectation); manipulated ones add 10 % of entries
between 480.00 and 489.99. The procedure's counts, proportions, MAD and z-statistics are
benford_py's; on clean ledgers nothing is flagged, on manipulated ones the planted digit is
(4 for the first digit, 48 for the first two), and only it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import benford
import pandas as pd
import pytest

from auditflow.procedures import stats
from auditflow.procedures.table import COLUMNS
from tests.unit.test_audit_procedures import run

SIZES = [5_000, 50_000, 1_000_000]
PLANTED = {1: 4, 2: 48}
HEADER = ",".join(COLUMNS) + "\n"


def ledger(path: Path, rows: int, *, manipulated: bool, seed: int) -> list[int]:
    """Write a ledger of `rows` clean amounts (plus 10 % planted ones) and return the cents."""
    rng = random.Random(seed)
    cents = [round(10 ** rng.uniform(3, 8)) for _ in range(rows)]  # 10.00 to 1 000 000.00
    if manipulated:
        cents += [rng.randrange(48_000, 49_000) for _ in range(rows // 10)]
    with path.open("w") as out:
        out.write(HEADER)
        out.writelines(
            f"JE-{i},2026-03-02,V{i % 97},6100,{c // 100}.{c % 100:02d},EUR,x,alice,bob\n" for i, c in enumerate(cents)
        )
    return cents


@pytest.fixture(scope="module", params=[(n, m) for n in SIZES for m in (False, True)], ids=lambda p: f"{p[0]}-{p[1]}")
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rows, manipulated = request.param
    path = tmp_path_factory.mktemp("benford") / "ledger.csv"
    cents = ledger(path, rows, manipulated=manipulated, seed=rows + manipulated)
    series = pd.Series(cents)
    return {
        "manipulated": manipulated,
        "results": {w: run("benford_first_digit", path, leading_digits=w) for w in (1, 2)},
        # benford_py on the same whole cents (decimals=0: no float rounding of the amounts)
        "reference": {
            w: benford.first_digits(series, digs=w, decimals=0, confidence=99, show_plot=False, verbose=False)
            for w in (1, 2)
        },
        "mad": {w: benford.mad(series, test=w, decimals=0, verbose=False) for w in (1, 2)},
    }


@pytest.mark.parametrize("width", [1, 2])
def test_the_statistics_are_benford_pys(case: dict[str, Any], width: int) -> None:
    summary = case["results"][width]["summary"]
    reference = case["reference"][width]
    assert summary["test"] == stats.TEST_NAMES[width]
    assert summary["tested"] == int(reference.Counts.sum())
    assert summary["mad"] == pytest.approx(case["mad"][width], abs=1e-6)
    for digits, row in reference.iterrows():
        assert summary["observed"][str(digits)] == pytest.approx(row.Found, abs=1e-5)
        assert summary["expected"][str(digits)] == pytest.approx(row.Expected, abs=1e-5)
        if "Z_score" in row and abs(row.Found - row.Expected) > 1 / summary["tested"]:
            # (where the continuity correction is smaller than the deviation: Nigrini drops
            # it otherwise, benford_py always subtracts it)
            assert summary["z"][str(digits)] == pytest.approx(row.Z_score, abs=0.01)
    limits = benford.constants.MAD_CONFORM[width]
    assert (stats.BANDS[width].close, stats.BANDS[width].acceptable, stats.BANDS[width].marginal) == tuple(limits)


@pytest.mark.parametrize("width", [1, 2])
def test_clean_ledgers_raise_nothing_and_manipulated_ones_the_planted_digit(case: dict[str, Any], width: int) -> None:
    result = case["results"][width]
    summary = result["summary"]
    if not case["manipulated"]:
        assert summary["conformity"] in ("close conformity", "acceptable conformity"), summary["mad"]
        assert summary["digits"] == [] and result["findings"] == []
        return
    assert summary["conformity"] in ("marginal conformity", "nonconformity"), summary["mad"]
    assert summary["digits"] == [PLANTED[width]]
    [finding] = result["findings"]
    low, high = (480, 489.99) if width == 2 else (400, 499.99)
    assert f"from {low:.2f} to {high:.2f}" in finding["explanation"]
    # benford_py finds it significant too (ours are the significant digits that are material)
    assert case["reference"][width].loc[PLANTED[width]].Z_score > stats.z_critical(0.01)


def test_the_flagged_entries_are_the_largest_of_the_band_where_the_excess_lies(tmp_path: Path) -> None:
    path = tmp_path / "ledger.csv"
    cents = ledger(path, 20_000, manipulated=True, seed=7)
    result = run("benford_first_digit", path, leading_digits=2)
    [finding] = result["findings"]
    band = sorted(((c, i) for i, c in enumerate(cents) if 48_000 <= c <= 48_999), key=lambda e: (-e[0], e[1]))
    assert finding["entry_ids"] == [f"JE-{i}" for _, i in band[:50]]
    excess = result["summary"]["excess"]["48"]
    assert 480 * excess <= float(finding["amount"]) < 490 * excess


def test_at_large_n_a_significant_excess_that_is_not_material_is_not_flagged() -> None:
    """A million amounts, marginal conformity: digits 1 to 3 are 1.1 points over Benford's
    share (z about 24, past any level) and 4 is 3 points over; only 4 is material."""
    n = 1_000_000
    share = {d: stats.expected_share(d) for d in range(1, 10)}
    share.update({d: share[d] + 0.011 for d in (1, 2, 3)})
    share[4] += 0.03
    for d in range(5, 10):
        share[d] -= 0.063 / 5
    result = stats.benford_test({d: round(n * p) for d, p in share.items()}, 1, 0.01)
    assert result.conformity == "marginal conformity"
    assert all(r.z > 20 for r in result.results[:3])
    assert [r.digits for r in result.flagged] == [4]
    assert result.severity(result.flagged[0]) == "medium"  # 2 x 0.03 / 9: not nonconformity alone


def test_a_digit_is_flagged_only_when_not_acceptable_significant_and_material() -> None:
    n = 10_000
    expected = {d: round(n * stats.expected_share(d)) for d in range(1, 10)}
    conforming = stats.benford_test(expected, 1, 0.01)
    assert conforming.conformity == "close conformity" and conforming.flagged == []
    skewed = {**expected, 4: expected[4] + 2_000}
    result = stats.benford_test(skewed, 1, 0.01)
    assert result.conformity == "nonconformity" and [r.digits for r in result.flagged] == [4]
    assert result.severity(result.flagged[0]) == "high"
    one = result.results[0]
    assert one.excess < 0 and not one.flagged  # a deficit is never a finding


def test_the_helpers() -> None:
    assert [stats.leading_digits(c, 1) for c in (1, 99, 12345, -7000)] == [1, 9, 1, 7]
    assert [stats.leading_digits(c, 2) for c in (5, 99, 12345, -7000)] == [0, 99, 12, 70]
    assert stats.chi_square_sf(15.507, 8) == pytest.approx(0.05, abs=1e-4)
    assert stats.chi_square_sf(112.022, 89) == pytest.approx(0.05, abs=1e-4)
    assert stats.chi_square_sf(1e6, 89) == 0.0
    assert [stats.BANDS[1].conformity(m) for m in (0.004, 0.01, 0.014, 0.02)] == [
        "close conformity",
        "acceptable conformity",
        "marginal conformity",
        "nonconformity",
    ]
    assert stats.cell_bounds(48, 2, 5) == (48_000, 48_999) and stats.cell_bounds(50, 2, 1) == (5, 5)
    assert stats.fold({40: {5: (3, 120_000)}, 48: {5: (2, 97_000)}}, 1) == {4: {5: (5, 217_000)}}

"""Benford's law as Nigrini tests it: pure functions over leading-digit counts.

The audit procedures count the leading digits of a ledger's amounts in SQL; everything that
judges those counts is here, free of any I/O, so that it can be checked against a reference
implementation on the same counts.

Two tests, by the number of leading digits (`width`): the first-digit test (digits 1 to 9)
and the first-two-digits test (10 to 99), which Nigrini recommends for audit work because it
points at a narrow band of amounts. Conformity is judged by the mean absolute deviation (MAD)
between observed and expected proportions, in Nigrini's bands for the test (Benford's Law,
2012, table 7.1): unlike the chi-square, the MAD does not grow with the number of amounts, so
a large ledger is not rejected for deviations too small to matter.

A digit is flagged only when three things hold: the distribution does not conform acceptably
(MAD past the acceptable band), the digit's z-statistic is significant at `alpha` with more
entries than expected, and its excess is material, an effect size rather than a p-value: the
digit's proportion exceeds Benford's by more than the MAD the test still calls acceptable, so
on its own the digit deviates more than the whole distribution may on average. At large n
every small deviation is significant; only the material ones are flagged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class Bands:
    """Nigrini's MAD conformity ranges for one test: upper limits of close, acceptable and
    marginal conformity; past the last, nonconformity."""

    close: float
    acceptable: float
    marginal: float

    def conformity(self, mad: float) -> str:
        if mad <= self.close:
            return "close conformity"
        if mad <= self.acceptable:
            return "acceptable conformity"
        if mad <= self.marginal:
            return "marginal conformity"
        return "nonconformity"


# Nigrini (2012), Benford's Law, table 7.1.
BANDS = {1: Bands(0.006, 0.012, 0.015), 2: Bands(0.0012, 0.0018, 0.0022)}
TEST_NAMES = {1: "first digit", 2: "first two digits"}


def digit_range(width: int) -> range:
    """The possible leading digits of a test: 1-9 for the first digit, 10-99 for two."""
    if width not in BANDS:
        raise ValueError(f"a Benford test reads 1 or 2 leading digits, not {width}")
    return range(10 ** (width - 1), 10**width)


def expected_share(digits: int) -> float:
    """Benford's probability that an amount starts with `digits` (e.g. 4 or 48)."""
    return math.log10(1 + 1 / digits)


def leading_digits(value: int, width: int) -> int:
    """The first `width` significant digits of a whole amount (in cents): 48_120 -> 48 for two.
    0 when the amount has fewer digits than the test reads."""
    value = abs(value)
    if value < 10 ** (width - 1):
        return 0
    return int(str(value)[:width])


def z_statistic(count: int, n: int, expected: float) -> float:
    """Nigrini's z-statistic of a proportion, with the continuity correction 1 / 2n (applied
    only when it is smaller than the deviation itself, as Nigrini does)."""
    deviation = abs(count / n - expected)
    correction = 1 / (2 * n)
    if correction < deviation:
        deviation -= correction
    return deviation / math.sqrt(expected * (1 - expected) / n)


def z_critical(alpha: float) -> float:
    """Two-sided normal critical value for `alpha`."""
    return -NormalDist().inv_cdf(alpha / 2)


def chi_square_sf(x: float, df: int) -> float:
    """P(X > x) for a chi-square variable with `df` degrees of freedom, in closed form (the
    regularized upper gamma for whole and half-whole shapes), summed in logs so that a large
    statistic underflows to 0 rather than overflowing."""
    if x <= 0:
        return 1.0
    half = x / 2
    if df % 2 == 0:
        terms = (-half + i * math.log(half) - math.lgamma(i + 1) for i in range(df // 2))
        return min(1.0, sum(math.exp(t) for t in terms))
    tail = math.erfc(math.sqrt(half))
    terms = (-half + (i + 0.5) * math.log(half) - math.lgamma(i + 1.5) for i in range((df - 1) // 2))
    return min(1.0, tail + sum(math.exp(t) for t in terms))


@dataclass(frozen=True)
class DigitResult:
    """One leading digit (or pair) against Benford's law, over `n` amounts."""

    digits: int
    count: int
    n: int
    expected: float
    z: float
    material: bool  # the excess is larger than the test's acceptable MAD
    flagged: bool

    @property
    def actual(self) -> float:
        return self.count / self.n

    @property
    def excess(self) -> float:
        """Entries beyond what Benford expects (negative when under-represented)."""
        return self.count - self.n * self.expected


@dataclass(frozen=True)
class BenfordResult:
    """A whole test: conformity by the MAD, the chi-square for reference, each digit, and the
    digits flagged (over-represented, significant and material, under non-acceptable MAD)."""

    width: int
    n: int
    mad: float
    conformity: str
    chi_square: float
    p_value: float
    results: tuple[DigitResult, ...]

    @property
    def flagged(self) -> list[DigitResult]:
        return [r for r in self.results if r.flagged]

    @property
    def acceptable(self) -> bool:
        return self.mad <= BANDS[self.width].acceptable

    def severity(self, result: DigitResult) -> str:
        """High when the digit alone, its excess matched by as much deficit elsewhere, puts the
        MAD past the marginal band (2 x excess proportion / number of digits), else medium."""
        share = 2 * (result.actual - result.expected) / len(digit_range(self.width))
        return "high" if share > BANDS[self.width].marginal else "medium"


def benford_test(counts: Mapping[int, int], width: int, alpha: float) -> BenfordResult:
    """Test the leading-digit `counts` (digit -> number of amounts; missing digits count 0)."""
    digits = digit_range(width)
    n = sum(counts.get(d, 0) for d in digits)
    if n == 0:
        raise ValueError("no amounts to test")
    bands = BANDS[width]
    mad = sum(abs(counts.get(d, 0) / n - expected_share(d)) for d in digits) / len(digits)
    acceptable = mad <= bands.acceptable
    critical = z_critical(alpha)
    results = []
    chi2 = 0.0
    for d in digits:
        count, expected = counts.get(d, 0), expected_share(d)
        z = z_statistic(count, n, expected)
        over = count / n - expected
        material = over > bands.acceptable
        flagged = not acceptable and over > 0 and z > critical and material
        results.append(DigitResult(d, count, n, expected, z, material, flagged))
        chi2 += (count - n * expected) ** 2 / (n * expected)
    return BenfordResult(
        width, n, mad, bands.conformity(mad), chi2, chi_square_sf(chi2, len(digits) - 1), tuple(results)
    )


# --- where an excess lies ---------------------------------------------------------------------

# Per leading digits (of the test's width), per magnitude (number of digits of the amount in
# cents): how many amounts and their sum in cents.
Cells = Mapping[int, Mapping[int, tuple[int, int]]]


def excess_magnitude(result: DigitResult, cells: Cells) -> int | None:
    """The magnitude where a digit's excess lies: the one whose count of the digit is the most
    above Benford's share of all the amounts of that magnitude (None without amounts)."""
    own = cells.get(result.digits, {})
    if not own:
        return None
    sizes: dict[int, int] = {}
    for by_magnitude in cells.values():
        for magnitude, (count, _total) in by_magnitude.items():
            sizes[magnitude] = sizes.get(magnitude, 0) + count
    return max(own, key=lambda m: (own[m][0] - sizes[m] * result.expected, -m))


def excess_value(result: DigitResult, cells: Cells) -> int:
    """The excess entries valued at the digit's average amount where the excess lies (e.g.
    480.00 to 489.99), so that the digit's large amounts of other magnitudes do not inflate
    it; 0 for a digit that is not over-represented."""
    magnitude = excess_magnitude(result, cells)
    if result.excess <= 0 or magnitude is None:
        return 0
    count, total = cells[result.digits][magnitude]
    return round(result.excess * total / count)


def cell_bounds(digits: int, width: int, magnitude: int) -> tuple[int, int]:
    """The amounts in cents that start with `digits` and have `magnitude` digits: 48 at 5 is
    48000 to 48999 (480.00 to 489.99). A magnitude shorter than the test reads (5 cents for
    the pair 50) holds one amount."""
    if magnitude >= width:
        unit = 10 ** (magnitude - width)
        return digits * unit, (digits + 1) * unit - 1
    value = digits // 10 ** (width - magnitude)
    return value, value


def fold(cells: Cells, width: int) -> dict[int, dict[int, tuple[int, int]]]:
    """Cells of the first two digits folded to fewer (`width` 1: 40-49 become 4)."""
    divisor = 10 ** (2 - width)
    folded: dict[int, dict[int, tuple[int, int]]] = {}
    for pair, by_magnitude in cells.items():
        into = folded.setdefault(pair // divisor, {})
        for magnitude, (count, total) in by_magnitude.items():
            before = into.get(magnitude, (0, 0))
            into[magnitude] = (before[0] + count, before[1] + total)
    return folded

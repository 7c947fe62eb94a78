"""The outlier statistics as plain functions: Student's t against its closed forms, the
quantile as its inverse, the family-wise per-test level and the threshold's rules."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from auditflow.procedures.outlier_stats import (
    OUTLIER_FLOOR,
    may_exceed,
    outlier_severity,
    outlier_threshold,
    per_test_level,
    student_t_isf,
    student_t_sf,
)

T_VALUES = (0.01, 0.3, 0.9, 1.0, 1.7, 4.0, 25.0, 1e4)


@pytest.mark.parametrize("t", T_VALUES)
def test_student_t_with_one_degree_is_cauchy(t: float) -> None:
    """Both branches of the continued fraction (t below and above 1 for one degree)."""
    assert student_t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("t", T_VALUES)
def test_student_t_with_two_degrees_has_its_closed_form(t: float) -> None:
    assert student_t_sf(t, 2) == pytest.approx(0.5 * (1 - t / math.sqrt(2 + t * t)), rel=1e-9, abs=1e-15)


def test_student_t_tends_to_the_normal() -> None:
    for t in (0.5, 2.0, 4.0):
        assert student_t_sf(t, 1e7) == pytest.approx(NormalDist().cdf(-t), rel=1e-5)


@pytest.mark.parametrize("df", [0.4 * 7, 2.0, 7.6, 19.6, 79.6, 1e4])
@pytest.mark.parametrize("level", [1e-9, 1e-6, 1e-3, 0.05])
def test_the_t_quantile_inverts_the_tail(df: float, level: float) -> None:
    t = student_t_isf(level, df)
    assert t > -NormalDist().inv_cdf(level) * (1 - 1e-9)  # t's tails are heavier than the normal's
    assert student_t_sf(t, df) == pytest.approx(level, rel=1e-8)


def test_the_t_quantile_of_one_degree_is_the_cauchy_one() -> None:
    for level in (1e-6, 1e-3, 0.1):
        assert student_t_isf(level, 1.0) == pytest.approx(math.tan(math.pi * (0.5 - level)), rel=1e-9)


def test_the_per_test_level_keeps_the_family_rate() -> None:
    assert per_test_level(1, 0.05) == pytest.approx(0.05)
    for tests in (10, 10_000, 10**7):
        level = per_test_level(tests, 0.05)
        assert 1 - (1 - level) ** tests == pytest.approx(0.05, rel=1e-6)
        assert per_test_level(tests, 0.05, "both") == pytest.approx(level / 2)
    assert per_test_level(0, 0.05) == per_test_level(1, 0.05)  # no tests: as one


def test_the_threshold_is_the_quantile_never_below_the_floor() -> None:
    assert outlier_threshold(1) == OUTLIER_FLOOR
    level = per_test_level(10**6)
    assert outlier_threshold(10**6) == pytest.approx(-NormalDist().inv_cdf(level))
    assert outlier_threshold(10**6, group=20) == pytest.approx(student_t_isf(level, 0.4 * 19))
    assert outlier_threshold(10**6, side="low") == outlier_threshold(10**6)


@pytest.mark.parametrize("tests", (1, 300, 10**4, 10**6, 10**7))
@pytest.mark.parametrize("side", ("high", "low", "both"))
def test_no_group_gets_a_threshold_below_a_large_groups(tests: int, side: str) -> None:
    """What lets `outliers` skip the groups whose scores stay within a large group's threshold."""
    floor = outlier_threshold(tests, side=side) * (1 - 1e-9)
    assert all(outlier_threshold(tests, side=side, group=g) >= floor for g in (3, 8, 9, 20, 57, 200, 10**4, 10**6))


def test_a_group_may_exceed_only_on_its_side() -> None:
    assert may_exceed(5.1, -1.0, 5.0)
    assert not may_exceed(5.0, -9.0, 5.0)
    assert may_exceed(1.0, -5.1, 5.0, "low")
    assert not may_exceed(9.0, -5.0, 5.0, "low")
    assert may_exceed(1.0, -5.1, 5.0, "both")
    assert may_exceed(5.1, -1.0, 5.0, "both")
    assert not may_exceed(5.0, -5.0, 5.0, "both")


def test_severity_is_high_beyond_twice_the_threshold() -> None:
    assert outlier_severity(10.1, 5.0) == "high"
    assert outlier_severity(-10.1, 5.0) == "high"
    assert outlier_severity(10.0, 5.0) == "medium"
    assert outlier_severity(5.5, 5.0) == "medium"

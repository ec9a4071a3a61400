"""Wilson and Poisson intervals against textbook values."""

from __future__ import annotations

import pytest

from harness.report.intervals import poisson_rate, wilson


def test_wilson_matches_the_textbook_interval() -> None:
    # 6 of 30: Wilson score interval 0.0951..0.3731 (Newcombe 1998, method 3).
    est = wilson(6, 30)
    assert est.value == pytest.approx(0.2)
    assert est.low == pytest.approx(0.0951, abs=1e-4)
    assert est.high == pytest.approx(0.3731, abs=1e-4)


def test_wilson_stays_inside_zero_one_at_the_edges() -> None:
    none = wilson(0, 30)
    assert none.low == 0.0 and 0.0 < (none.high or 0) < 0.15
    all_ = wilson(30, 30)
    assert all_.high == pytest.approx(1.0) and 0.85 < (all_.low or 0) < 1.0


def test_wilson_of_nothing_is_unknown_and_bad_counts_are_refused() -> None:
    assert wilson(0, 0).value is None
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_poisson_exact_interval_and_scaling() -> None:
    # 3 events in 2 hours: exact (Garwood) 95% interval for the count is 0.619..8.767.
    est = poisson_rate(3, 2.0)
    assert est.value == pytest.approx(1.5)
    assert est.low == pytest.approx(0.619 / 2, abs=1e-3)
    assert est.high == pytest.approx(8.767 / 2, abs=1e-3)
    assert poisson_rate(0, 1.0).low == 0.0
    assert poisson_rate(1, 0.0).value is None
    per_k = wilson(2, 1000).scaled(1000)
    assert per_k.value == pytest.approx(2.0)
    assert per_k.to_dict()["ci95"][0] < 2.0 < per_k.to_dict()["ci95"][1]

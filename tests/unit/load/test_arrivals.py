from __future__ import annotations

import numpy as np
import pytest

from harness.load.arrivals import Arrivals, schedule


def test_constant_rate_is_exact_and_absolute() -> None:
    times = schedule(Arrivals(rate=4.0, kind="constant"), count=9)
    assert times == pytest.approx([i * 0.25 for i in range(9)])


def test_poisson_rate_and_exponential_gaps() -> None:
    times = np.array(schedule(Arrivals(rate=100.0, kind="poisson", seed=3), count=20_000))
    gaps = np.diff(times)
    assert len(times) / times[-1] == pytest.approx(100.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # CV of an exponential


@pytest.mark.parametrize("shape", [0.25, 4.0])
def test_gamma_burstiness_sets_the_variability(shape: float) -> None:
    times = np.array(schedule(Arrivals(rate=50.0, kind="gamma", burstiness=shape), count=20_000))
    gaps = np.diff(times)
    assert len(times) / times[-1] == pytest.approx(50.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / np.sqrt(shape), rel=0.1)


def test_same_seed_same_schedule() -> None:
    a = schedule(Arrivals(rate=10.0, seed=5), count=100)
    b = schedule(Arrivals(rate=10.0, seed=5), count=100)
    c = schedule(Arrivals(rate=10.0, seed=6), count=100)
    assert a == b and a != c


def test_linear_ramp_follows_the_cumulative_rate() -> None:
    arr = Arrivals(rate=100.0, kind="constant", ramp_from=0.0, ramp_s=10.0)
    times = schedule(arr, duration_s=20.0)
    # Λ(10) = 500 during the ramp, then 100/s for 10 s more.
    assert sum(t < 10.0 for t in times) == pytest.approx(500, abs=1)
    assert len(times) == pytest.approx(1500, abs=2)
    assert arr.rate_at(5.0) == 50.0 and arr.rate_at(15.0) == 100.0
    # gaps shrink as the rate grows
    gaps = np.diff(times)
    assert gaps[10] > gaps[400]


def test_validation() -> None:
    with pytest.raises(ValueError):
        Arrivals(rate=0.0)
    with pytest.raises(ValueError):
        Arrivals(rate=1.0, kind="gamma", burstiness=0.0)


def test_poisson_counts_over_seeds_are_poisson() -> None:
    """Issue 14: seed 0 sends 73 requests in 10 s at 5/s. The generator is right: over 2,000
    seeds the count has the Poisson mean and variance (50), and 73 is a 1-in-1,000 draw."""
    counts = np.array(
        [len(schedule(Arrivals(rate=5.0, seed=s), duration_s=10.0)) for s in range(2000)]
    )
    assert counts.mean() == pytest.approx(50.0, abs=0.5)
    assert counts.var() == pytest.approx(50.0, rel=0.1)
    assert len(schedule(Arrivals(rate=5.0, seed=0), duration_s=10.0)) == 73
    assert (counts >= 73).mean() < 0.005
    low, high = Arrivals(rate=5.0).count_range(10.0)
    assert (low, high) == (37, 64)
    inside = ((counts >= low) & (counts <= high)).mean()
    assert inside == pytest.approx(0.95, abs=0.015)


@pytest.mark.parametrize(
    "arrivals",
    [
        Arrivals(rate=20.0, kind="gamma", burstiness=0.5),
        Arrivals(rate=20.0, kind="gamma", burstiness=4.0),
        Arrivals(rate=20.0, ramp_from=2.0, ramp_s=5.0),
    ],
)
def test_count_range_covers_95_percent_of_seeds(arrivals: Arrivals) -> None:
    from dataclasses import replace

    counts = np.array(
        [len(schedule(replace(arrivals, seed=s), duration_s=10.0)) for s in range(1000)]
    )
    assert counts.mean() == pytest.approx(arrivals.expected_count(10.0), rel=0.03)
    low, high = arrivals.count_range(10.0)
    assert ((counts >= low) & (counts <= high)).mean() == pytest.approx(0.95, abs=0.03)


def test_constant_count_is_exact() -> None:
    arr = Arrivals(rate=4.0, kind="constant")
    assert arr.count_range(2.0) == (8, 8) == (len(schedule(arr, duration_s=2.0)),) * 2
    assert Arrivals(rate=3.0, kind="constant").count_range(1.1) == (4, 4)

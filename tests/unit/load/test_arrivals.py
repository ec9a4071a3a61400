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

"""Arrival schedules (pure): when each request is due, as absolute offsets from the start.

Open-loop schedules are built by time-rescaling: unit-rate inter-arrival gaps (exponential for
Poisson, gamma for bursty traffic, constant) are summed into "operational time" ``s`` and mapped
through the inverse of the cumulative rate ``Λ(t)``. With a linear ramp from ``r0`` to ``r1`` over
``T`` seconds, ``Λ(t) = r0·t + (r1 - r0)·t²/(2T)`` for ``t <= T`` and grows at ``r1`` after. The
sender sleeps until each absolute due time, so no error accumulates over a long run.

Closed-loop (``--concurrency C`` without a rate) has no schedule: C workers send back to back.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

ArrivalKind = Literal["poisson", "constant", "gamma"]
ARRIVAL_KINDS: tuple[str, ...] = ("poisson", "constant", "gamma")


@dataclass(frozen=True)
class Arrivals:
    """An open-loop arrival process.

    ``rate`` is requests/s (the end rate when ramping); ``ramp_from`` and ``ramp_s`` describe a
    linear ramp from ``ramp_from`` to ``rate`` over the first ``ramp_s`` seconds. ``burstiness``
    is the gamma shape: 1 is Poisson, below 1 burstier, above 1 smoother.
    """

    rate: float
    kind: ArrivalKind = "poisson"
    burstiness: float = 1.0
    ramp_from: float | None = None
    ramp_s: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError("rate must be positive")
        if self.kind not in ARRIVAL_KINDS:
            raise ValueError(f"arrival must be one of {', '.join(ARRIVAL_KINDS)}")
        if not self.burstiness > 0:
            raise ValueError("burstiness must be positive")
        if self.ramp_s < 0 or (self.ramp_from is not None and self.ramp_from < 0):
            raise ValueError("a ramp needs a non-negative start rate and duration")

    def rate_at(self, t: float) -> float:
        """The requested rate at ``t`` seconds."""
        if self.ramp_from is None or self.ramp_s <= 0 or t >= self.ramp_s:
            return self.rate
        return self.ramp_from + (self.rate - self.ramp_from) * t / self.ramp_s

    def expected_count(self, duration_s: float) -> float:
        """``Λ(duration)``: how many requests the schedule asks for in ``duration_s``."""
        return self._cumulative(duration_s)

    def count_range(self, duration_s: float, level: float = 0.95) -> tuple[int, int]:
        """The central ``level`` range of the number of requests the schedule sends in
        ``duration_s`` over all seeds: ``(low, high)`` with ``P(count < low)`` and
        ``P(count > high)`` each at most ``(1 - level) / 2``.

        Poisson (and a Poisson ramp): the count is Poisson(Λ(duration)), exact quantiles.
        Gamma gaps of shape k: the count of a renewal process, about normal with variance
        Λ/k. Constant: ``ceil(Λ)`` exactly.
        """
        mean = self.expected_count(duration_s)
        if self.kind == "constant":
            n = math.ceil(mean - 1e-9)
            return n, n
        tail = (1.0 - level) / 2.0
        if self.kind == "poisson" and mean <= 50_000:
            return _poisson_quantile(mean, tail), _poisson_quantile(mean, 1.0 - tail)
        variance = mean / (self.burstiness if self.kind == "gamma" else 1.0)
        z = _normal_quantile(1.0 - tail)
        half = z * math.sqrt(variance)
        return max(0, math.floor(mean - half)), math.ceil(mean + half)

    def _cumulative(self, t: float) -> float:
        if self.ramp_from is None or self.ramp_s <= 0:
            return self.rate * t
        r0, r1, big_t = self.ramp_from, self.rate, self.ramp_s
        if t <= big_t:
            return r0 * t + (r1 - r0) * t * t / (2 * big_t)
        return (r0 + r1) * big_t / 2 + r1 * (t - big_t)

    def _inverse(self, s: float) -> float:
        if self.ramp_from is None or self.ramp_s <= 0:
            return s / self.rate
        r0, r1, big_t = self.ramp_from, self.rate, self.ramp_s
        at_end = (r0 + r1) * big_t / 2
        if s >= at_end:
            return big_t + (s - at_end) / r1
        a = (r1 - r0) / (2 * big_t)
        if s <= 0.0:
            return 0.0
        if abs(a) < 1e-15:
            return s / r0
        # a·t² + r0·t - s = 0, the root in [0, T]; written to stay exact when r0 = 0.
        return 2 * s / (r0 + math.sqrt(r0 * r0 + 4 * a * s))

    def times(self) -> Iterator[float]:
        """Due times in seconds from the start, increasing, without end."""
        rng = np.random.default_rng([self.seed, 0xA7])
        s = 0.0
        first = True
        while True:
            if self.kind == "constant":
                gaps = np.ones(1024)
            elif self.kind == "poisson":
                gaps = rng.exponential(1.0, size=1024)
            else:
                gaps = rng.gamma(self.burstiness, 1.0 / self.burstiness, size=1024)
            for gap in gaps:
                if first:
                    # The first request goes at t=0 for constant traffic (as vllm bench does);
                    # random processes start with a random gap.
                    first = False
                    if self.kind == "constant":
                        yield self._inverse(0.0)
                        continue
                s += float(gap)
                yield self._inverse(s)


def _poisson_quantile(mean: float, q: float) -> int:
    """The smallest k with P(X <= k) >= q for X ~ Poisson(mean)."""
    if mean <= 0:
        return 0
    log_pmf = -mean  # log P(X = 0)
    cdf = math.exp(log_pmf)
    k = 0
    while cdf < q:
        k += 1
        log_pmf += math.log(mean) - math.log(k)
        cdf += math.exp(log_pmf)
    return k


def _normal_quantile(p: float) -> float:
    """The standard normal quantile (bisection on erf; exact enough for a range)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def schedule(
    arrivals: Arrivals, *, count: int | None = None, duration_s: float | None = None
) -> list[float]:
    """The first due times, bounded by ``count`` and/or ``duration_s`` (for tests and plots)."""
    if count is None and duration_s is None:
        raise ValueError("schedule() needs a count or a duration")
    out: list[float] = []
    for t in arrivals.times():
        if duration_s is not None and t >= duration_s:
            break
        out.append(t)
        if count is not None and len(out) >= count:
            break
    return out

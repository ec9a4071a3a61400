"""Confidence intervals for the rates campaigns report (pure; scipy does the statistics).

* a proportion (startup hangs per start, hangs per request, failed requests): the Wilson score
  interval, which stays inside [0, 1] and behaves at 0 of N and N of N, where the normal
  approximation does not (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``);
* a rate over an exposure (hangs per hour of soak): the exact Poisson (Garwood) interval from
  the chi-square quantiles (``scipy.stats.chi2.ppf``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scipy import stats

#: Every interval in harness's outputs is a 95 % interval.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95 % interval (``None`` bounds when nothing was observed)."""

    value: float | None
    low: float | None
    high: float | None

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(float(x), digits)

        return {"value": r(self.value), "ci95": [r(self.low), r(self.high)]}

    def scaled(self, factor: float) -> Estimate:
        """The same estimate in other units (per request -> per 1,000 requests)."""

        def s(x: float | None) -> float | None:
            return None if x is None else x * factor

        return Estimate(s(self.value), s(self.low), s(self.high))


def wilson(successes: int, trials: int) -> Estimate:
    """``successes / trials`` with its Wilson score interval; ``trials == 0`` gives Nones."""
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return Estimate(None, None, None)
    ci = stats.binomtest(successes, trials).proportion_ci(CONFIDENCE, method="wilson")
    return Estimate(successes / trials, float(ci.low), float(ci.high))


def poisson_rate(events: int, exposure: float) -> Estimate:
    """``events / exposure`` (e.g. hangs per hour) with the exact Poisson interval."""
    if events < 0:
        raise ValueError("events must not be negative")
    if exposure <= 0:
        return Estimate(None, None, None)
    alpha = 1.0 - CONFIDENCE
    low = 0.0 if events == 0 else float(stats.chi2.ppf(alpha / 2, 2 * events)) / 2
    high = float(stats.chi2.ppf(1 - alpha / 2, 2 * events + 2)) / 2
    return Estimate(events / exposure, low / exposure, high / exposure)

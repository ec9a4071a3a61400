"""Is a difference between two campaign cells real or noise? (pure; scipy does the tests)

Three kinds of evidence, each with the test that fits it:

* per-request latencies (TTFT, TPOT, ITL, E2E), pooled over repeats: the Mann-Whitney U test
  (no normality assumed; latencies are skewed), effect size = ratio of medians and Cliff's delta
  (the probability that a request of one cell is slower than one of the other, minus the
  reverse; from U: ``delta = 2U / (n1 n2) - 1``);
* one number per repeat (throughput): Welch's t-test (unequal variances), effect = ratio of
  means; it needs at least two repeats per cell;
* counts (failed, stalled requests; hangs per start): Fisher's exact test on the 2x2 table,
  effect = difference of the two rates.

All p-values of one comparison table are adjusted together for the false discovery rate
(Benjamini-Hochberg, ``scipy.stats.false_discovery_control``); a difference is *significant*
when its adjusted p-value is below :data:`ALPHA`, and *noise* otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from scipy import stats

ALPHA = 0.05
Test = Literal["mann-whitney-u", "welch-t", "fisher-exact", "none"]


@dataclass(frozen=True)
class Difference:
    """One metric compared between a cell and the baseline."""

    metric: str
    test: Test
    baseline: float | None
    other: float | None
    effect: float | None  # ratio (other / baseline) or difference of rates (other - baseline)
    effect_kind: Literal["ratio", "difference"]
    p_value: float | None
    p_adjusted: float | None = None
    cliffs_delta: float | None = None
    n: tuple[int, int] = (0, 0)
    note: str | None = None

    @property
    def magnitude(self) -> str | None:
        """Cliff's delta in words (Romano et al. 2006): negligible, small, medium, large."""
        if self.cliffs_delta is None:
            return None
        d = abs(self.cliffs_delta)
        if d < 0.147:
            return "negligible"
        if d < 0.33:
            return "small"
        if d < 0.474:
            return "medium"
        return "large"

    @property
    def verdict(self) -> Literal["significant", "noise", "n/a"]:
        if self.p_adjusted is None:
            return "n/a"
        return "significant" if self.p_adjusted < ALPHA else "noise"

    def to_dict(self) -> dict[str, Any]:
        def r(x: float | None, d: int = 4) -> float | None:
            return None if x is None or not math.isfinite(x) else round(float(x), d)

        return {
            "metric": self.metric,
            "test": self.test,
            "baseline": r(self.baseline),
            "other": r(self.other),
            "effect": r(self.effect),
            "effect_kind": self.effect_kind,
            "cliffs_delta": r(self.cliffs_delta),
            "magnitude": self.magnitude,
            "p_value": r(self.p_value, 6),
            "p_adjusted": r(self.p_adjusted, 6),
            "verdict": self.verdict,
            "n": list(self.n),
            "note": self.note,
        }


def _ratio(other: float | None, base: float | None) -> float | None:
    if other is None or base is None or base == 0:
        return None
    return other / base


def compare_samples(metric: str, baseline: Sequence[float], other: Sequence[float]) -> Difference:
    """Per-request samples (milliseconds): medians, Mann-Whitney U, Cliff's delta."""
    a = np.asarray(baseline, dtype=float)
    b = np.asarray(other, dtype=float)
    med_a = float(np.median(a)) if a.size else None
    med_b = float(np.median(b)) if b.size else None
    if a.size < 2 or b.size < 2:
        return Difference(
            metric,
            "none",
            med_a,
            med_b,
            _ratio(med_b, med_a),
            "ratio",
            None,
            n=(int(a.size), int(b.size)),
            note="too few samples to test",
        )
    result = stats.mannwhitneyu(b, a, alternative="two-sided")
    delta = 2.0 * float(result.statistic) / (a.size * b.size) - 1.0
    return Difference(
        metric,
        "mann-whitney-u",
        med_a,
        med_b,
        _ratio(med_b, med_a),
        "ratio",
        float(result.pvalue),
        cliffs_delta=delta,
        n=(int(a.size), int(b.size)),
    )


def compare_repeats(metric: str, baseline: Sequence[float], other: Sequence[float]) -> Difference:
    """One value per repeat (e.g. output tokens/s): means and Welch's t-test."""
    a = np.asarray(baseline, dtype=float)
    b = np.asarray(other, dtype=float)
    mean_a = float(a.mean()) if a.size else None
    mean_b = float(b.mean()) if b.size else None
    if a.size < 2 or b.size < 2:
        return Difference(
            metric,
            "none",
            mean_a,
            mean_b,
            _ratio(mean_b, mean_a),
            "ratio",
            None,
            n=(int(a.size), int(b.size)),
            note="needs --repeats 2 or more to test",
        )
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        p = 1.0 if mean_a == mean_b else 0.0
    else:
        p = float(stats.ttest_ind(b, a, equal_var=False).pvalue)
    return Difference(
        metric,
        "welch-t",
        mean_a,
        mean_b,
        _ratio(mean_b, mean_a),
        "ratio",
        p,
        n=(int(a.size), int(b.size)),
    )


def compare_counts(metric: str, baseline: tuple[int, int], other: tuple[int, int]) -> Difference:
    """Events out of trials, e.g. ``(stalled, finished)``: rates and Fisher's exact test."""
    (ka, na), (kb, nb) = baseline, other
    if na <= 0 or nb <= 0:
        return Difference(
            metric, "none", None, None, None, "difference", None, n=(na, nb), note="no trials"
        )
    rate_a, rate_b = ka / na, kb / nb
    if ka == 0 and kb == 0:
        p = 1.0
    else:
        p = float(stats.fisher_exact([[kb, nb - kb], [ka, na - ka]]).pvalue)
    return Difference(
        metric, "fisher-exact", rate_a, rate_b, rate_b - rate_a, "difference", p, n=(na, nb)
    )


def adjust(differences: Sequence[Difference]) -> list[Difference]:
    """Benjamini-Hochberg adjusted p-values over every tested difference of one table."""
    tested = [i for i, d in enumerate(differences) if d.p_value is not None]
    out = list(differences)
    if not tested:
        return out
    raw = np.asarray([differences[i].p_value for i in tested], dtype=float)
    adjusted = stats.false_discovery_control(raw, method="bh")
    for i, p in zip(tested, adjusted, strict=True):
        out[i] = replace(out[i], p_adjusted=float(min(1.0, p)))
    return out

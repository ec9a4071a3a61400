"""The compare tests say "significant" for a real difference and "noise" for none."""

from __future__ import annotations

import numpy as np
import pytest

from harness.report.significance import (
    adjust,
    compare_counts,
    compare_repeats,
    compare_samples,
)


def test_a_real_latency_shift_is_significant_with_its_effect() -> None:
    rng = np.random.default_rng(1)
    base = rng.lognormal(mean=4.0, sigma=0.3, size=400)
    slower = base * 1.3
    d = adjust([compare_samples("ttft_ms", base, rng.permutation(slower))])[0]
    assert d.verdict == "significant"
    assert d.effect == pytest.approx(1.3, rel=0.02)
    assert d.cliffs_delta is not None and d.cliffs_delta > 0.3


def test_the_same_distribution_is_noise() -> None:
    rng = np.random.default_rng(2)
    a = rng.lognormal(4.0, 0.3, size=300)
    b = rng.lognormal(4.0, 0.3, size=300)
    d = adjust([compare_samples("ttft_ms", a, b)])[0]
    assert d.verdict == "noise"
    assert abs(d.cliffs_delta or 0) < 0.15


def test_throughput_needs_two_repeats_and_then_uses_welch() -> None:
    one = compare_repeats("output_tokens_per_s", [100.0], [90.0])
    assert one.verdict == "n/a" and "repeats" in (one.note or "")
    two = adjust([compare_repeats("output_tokens_per_s", [100, 101, 99], [80, 81, 79])])[0]
    assert two.test == "welch-t" and two.verdict == "significant"
    assert two.effect == pytest.approx(0.8)


def test_counts_use_fishers_exact_test() -> None:
    same = adjust([compare_counts("stalled_rate", (0, 100), (0, 100))])[0]
    assert same.verdict == "noise" and same.effect == 0.0
    worse = adjust([compare_counts("hang_rate", (0, 40), (12, 40))])[0]
    assert worse.verdict == "significant"
    assert worse.effect == pytest.approx(0.3)


def test_adjustment_raises_p_values_over_a_table() -> None:
    rng = np.random.default_rng(3)
    diffs = [
        compare_samples(f"m{i}", rng.normal(10, 1, 50), rng.normal(10, 1, 50)) for i in range(5)
    ]
    adjusted = adjust(diffs)
    for raw, adj in zip(diffs, adjusted, strict=True):
        assert adj.p_adjusted is not None and raw.p_value is not None
        assert adj.p_adjusted >= raw.p_value

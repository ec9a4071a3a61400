from __future__ import annotations

import random

import numpy as np
import pytest

from harness.report.stats import (
    Distribution,
    Slo,
    WindowSeries,
    auto_window_s,
    goodput,
    percentiles,
)


def test_percentiles_keys_and_values() -> None:
    values = list(range(1, 1001))
    p = percentiles(values)
    assert set(p) == {"mean", "p50", "p90", "p99", "p999"}
    assert p["mean"] == pytest.approx(500.5)
    assert p["p50"] == pytest.approx(500.5)
    assert p["p99"] == pytest.approx(np.percentile(values, 99), rel=1e-6)


def test_percentiles_of_nothing_are_none() -> None:
    assert percentiles([]) == dict.fromkeys(["mean", "p50", "p90", "p99", "p999"])


def test_distribution_is_exact_below_the_limit() -> None:
    d = Distribution(exact_limit=1000)
    values = [random.Random(1).lognormvariate(3, 1) for _ in range(500)]
    d.extend(values)
    assert d.exact
    assert d.summary() == percentiles(values)


def test_distribution_histogram_within_one_percent_and_bounded() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(2.0, 1.2) for _ in range(60_000)] + [0.0] * 10
    d = Distribution(exact_limit=1_000)
    d.extend(values)
    assert not d.exact
    exact = percentiles(values)
    got = d.summary()
    assert got["mean"] == pytest.approx(exact["mean"], rel=1e-9)
    for key in ("p50", "p90", "p99", "p999"):
        assert got[key] == pytest.approx(exact[key], rel=0.011), key
    # memory: bounded by the number of buckets, not of samples
    assert len(d._buckets) < 2_000


def test_slo_met() -> None:
    slo = Slo(ttft_ms=100, tpot_ms=10)
    ok = {"status": "ok", "ttft_ms": 50.0, "tpot_ms": 5.0, "e2e_ms": 900.0}
    assert slo.met(ok)
    assert not slo.met({**ok, "ttft_ms": 150.0})
    assert not slo.met({**ok, "status": "stalled"})
    assert slo.met({**ok, "tpot_ms": None})  # one-token answer
    assert not Slo().active


def test_goodput_block() -> None:
    g = goodput(good=30, elapsed_s=10.0, finished=40, slo=Slo(ttft_ms=100))
    assert g["requests_per_s"] == 3.0
    assert g["fraction"] == 0.75
    assert g["slo"]["ttft_ms"] == 100


def test_windows_count_by_finish_time() -> None:
    w = WindowSeries(1.0, Slo(ttft_ms=100))
    for t, status, ttft in [
        (0.1, "ok", 50),
        (0.5, "ok", 150),
        (1.2, "stalled", None),
        (2.5, "failed", None),
    ]:
        w.add(t, {"status": status, "ttft_ms": ttft, "e2e_ms": 10.0, "output_tokens": 4})
    w.close_before(1.5)
    w.add(0.9, {"status": "ok", "ttft_ms": 20, "e2e_ms": 1.0, "output_tokens": 2})  # straggler
    series = w.series(end_s=2.8)
    assert [s["start_s"] for s in series] == [0.0, 1.0, 2.0]
    assert series[0]["completed"] == 3 and series[0]["output_tokens_per_s"] == 10.0
    assert series[0]["goodput_requests_per_s"] == 2.0
    assert series[1]["stalled"] == 1
    assert series[2]["failed"] == 1 and series[2]["end_s"] == 2.8


def test_auto_window() -> None:
    assert auto_window_s(30) == 1.0
    assert auto_window_s(3600) == 60.0
    assert auto_window_s(None) == 10.0

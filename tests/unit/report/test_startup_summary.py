"""The startup block of repro-startup."""

from __future__ import annotations

import pytest

from harness.report.startup import startup_summary


def test_rate_interval_phases_and_where_hangs_stopped() -> None:
    starts = [
        {"outcome": "healthy", "ready_s": 10.0, "phases": {"loading weights": 3.0, "ready": 10.0}},
        {"outcome": "healthy", "ready_s": 12.0, "phases": {"loading weights": 4.0, "ready": 12.0}},
        {"outcome": "hang", "phases": {"loading weights": 3.5}, "last_phase": "loading weights"},
        {"outcome": "crash", "phases": {}, "last_phase": None},
        {"outcome": "interrupted"},
    ]
    s = startup_summary(starts, ["loading weights", "ready"])
    assert (s["runs"], s["healthy"], s["hangs"], s["crashes"]) == (4, 2, 1, 1)
    assert s["rate"] == 0.25
    lo, hi = s["ci95"]
    assert lo < 0.25 < hi
    assert s["ready_s"]["p50"] == pytest.approx(11.0)
    assert list(s["phases"]) == ["loading weights", "ready"]
    assert s["phases"]["loading weights"]["n"] == 3
    assert s["hangs_after_phase"] == {"loading weights": 1}


def test_no_start_yet() -> None:
    s = startup_summary([])
    assert s["runs"] == 0 and s["rate"] is None and s["ci95"] == [None, None]

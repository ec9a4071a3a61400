"""A load's summary.json blocks from the one aggregator fed with the runner's clock."""

from __future__ import annotations

from typing import Any

import pytest

from harness.report.aggregate import RecordStats
from harness.report.loadsummary import Sends, load_summary


def rec(status: str = "ok", ttft: float = 50.0) -> dict[str, Any]:
    ok = status == "ok"
    return {
        "status": status,
        "error": None if ok else "token_stall",
        "sent_at": 1e9,  # wall clock: ignored when the finish time is given
        "duration_ms": 1.0,
        "ttft_ms": ttft if ok else None,
        "tpot_ms": 10.0 if ok else None,
        "e2e_ms": 100.0 if ok else None,
        "itl_ms": [10.0, 12.0] if ok else [],
        "output_tokens": 3 if ok else 0,
        "prompt_tokens": 20,
    }


def test_blocks_of_an_open_loop_run() -> None:
    stats = RecordStats(0.0, window_s=5.0)
    sends = Sends()
    for i in range(10):
        sends.add(sent_s=i * 1.0 + 0.01, due_s=i * 1.0)
        stats.add(rec(), at_s=i * 1.0 + 0.5)
    stats.add(rec("stalled"), at_s=9.9)
    summary = load_summary(
        stats, sends, requested_rate=1.0, concurrency=None, end_s=10.0, expected=None
    )
    assert summary["requests"] == {
        "completed": 10,
        "failed": 0,
        "stalled": 1,
        "aborted": 0,
        "sent": 10,
    }
    assert summary["throughput"]["requests_per_s"] == pytest.approx(1.0)
    assert summary["rate"]["achieved"] == pytest.approx(1.0)
    assert summary["rate"]["scheduled"] == pytest.approx(1.0)
    assert summary["rate"]["send_lag_ms"]["p50"] == pytest.approx(10.0, rel=0.02)
    assert summary["rate"]["capped_by_concurrency"] is None
    assert summary["latency_ms"]["itl"]["mean"] == pytest.approx(11.0)
    # Windows follow the finish times given (0.5 .. 9.9 s), not the records' wall clock.
    assert [w["completed"] for w in summary["windows"]] == [5, 5]
    assert sum(w["stalled"] for w in summary["windows"]) == 1
    assert stats.last_at_s == pytest.approx(9.9)


def test_a_closed_loop_achieves_its_completions_per_second() -> None:
    stats = RecordStats(0.0, window_s=1.0)
    sends = Sends()
    for i in range(4):
        sends.add(sent_s=0.0, due_s=None)
        stats.add(rec(), at_s=1.0 + i * 0.1)
    summary = load_summary(stats, sends, requested_rate=None, concurrency=4, end_s=2.0)
    assert summary["rate"]["achieved"] == pytest.approx(2.0)
    assert summary["rate"]["send_lag_ms"] is None
    sends.waited_for_slot = 3
    capped = load_summary(stats, sends, requested_rate=10.0, concurrency=4, end_s=2.0)
    assert capped["rate"]["capped_by_concurrency"] == {"concurrency": 4, "waited": 3}

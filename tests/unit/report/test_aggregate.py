"""Records -> summary blocks, as a campaign recomputes them from requests.jsonl."""

from __future__ import annotations

from typing import Any

import pytest

from harness.report.aggregate import RecordStats, finished_at, summarize_records

T0 = 1_000_000.0


def rec(i: int, status: str = "ok", *, sent: float = 0.0, ttft: float = 50.0) -> dict[str, Any]:
    return {
        "index": i,
        "status": status,
        "error": None if status == "ok" else "token_stall",
        "sent_at": T0 + sent,
        "duration_ms": 1000.0,
        "ttft_ms": ttft if status == "ok" else None,
        "tpot_ms": 10.0 if status == "ok" else None,
        "e2e_ms": 1000.0 if status == "ok" else None,
        "itl_ms": [10.0, 12.0] if status == "ok" else [],
        "output_tokens": 3 if status == "ok" else 0,
        "prompt_tokens": 20,
    }


def test_counts_percentiles_throughput_and_windows() -> None:
    records = [rec(i, sent=float(i)) for i in range(10)] + [rec(10, "stalled", sent=5.0)]
    s = summarize_records(records, t0=T0, elapsed_s=11.0, window_s=5.0)
    assert s["requests"] == {
        "completed": 10,
        "failed": 0,
        "stalled": 1,
        "aborted": 0,
        "finished": 11,
    }
    assert s["throughput"]["requests_per_s"] == pytest.approx(10 / 11, abs=1e-3)
    assert s["latency_ms"]["ttft"]["p50"] == 50.0
    assert s["latency_ms"]["itl"]["mean"] == pytest.approx(11.0)
    assert s["errors"] == {"token_stall": 1}
    # Finish times 1..11 s: windows [0,5), [5,10), [10,15).
    assert [w["completed"] for w in s["windows"]] == [4, 5, 1]
    assert sum(w["stalled"] for w in s["windows"]) == 1


def test_finished_at_and_the_span_default() -> None:
    assert finished_at({"sent_at": 10.0, "duration_ms": 2500.0}) == pytest.approx(12.5)
    assert finished_at({"duration_ms": 1.0}) is None
    stats = RecordStats(T0, window_s=1.0).extend([rec(0, sent=0.0), rec(1, sent=4.0)])
    assert stats.summary()["throughput"]["requests_per_s"] == pytest.approx(2 / 5)
    assert stats.max_index == 1


def test_samples_are_kept_for_tests_and_bounded() -> None:
    stats = RecordStats(T0, window_s=10.0, keep_samples=True, max_samples=50)
    stats.extend(rec(i, ttft=float(i)) for i in range(500))
    assert stats.samples is not None
    assert len(stats.samples["ttft"]) == 50
    # A uniform sample of 0..499, not the first 50.
    assert max(stats.samples["ttft"]) > 100
    assert stats.latency["ttft"].count == 500

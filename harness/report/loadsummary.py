"""A load run's ``summary.json`` (pure): the aggregates of its finished requests
(:class:`~harness.report.aggregate.RecordStats`) and how its requests went out (:class:`Sends`).

The blocks are the contract's (``requests``, ``throughput``, ``rate``, ``latency_ms``,
``goodput``, ``windows``, ``errors``, ``tokens``); the caller adds ``run`` (what it was asked
to do) and ``notes``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from harness.report.aggregate import RecordStats
from harness.report.stats import Distribution

Summary = dict[str, Any]


class Sends:
    """How a load's requests went out: how many, when the first and last were sent and (open
    loop) were due, in seconds from the start, how late each was sent, and how many waited for
    a free concurrency slot."""

    def __init__(self) -> None:
        self.count = 0
        self.first_s: float | None = None
        self.last_s: float | None = None
        self.first_due_s: float | None = None
        self.last_due_s: float | None = None
        self.lag_ms = Distribution()
        self.waited_for_slot = 0

    def add(self, sent_s: float, due_s: float | None) -> None:
        """One request sent ``sent_s`` seconds after the start (due at ``due_s``)."""
        self.count += 1
        if self.first_s is None:
            self.first_s = sent_s
        self.last_s = sent_s
        if due_s is not None:
            if self.first_due_s is None:
                self.first_due_s = due_s
            self.last_due_s = due_s
            self.lag_ms.add(max(0.0, (sent_s - due_s) * 1000.0))

    def rate(self) -> float | None:
        """Requests per second from the first send to the last."""
        return _per_span(self.count, self.first_s, self.last_s)

    def scheduled_rate(self) -> float | None:
        """Requests per second from the first due time to the last (what the schedule drew)."""
        return _per_span(self.count, self.first_due_s, self.last_due_s)


def _per_span(n: int, first: float | None, last: float | None) -> float | None:
    span = (last or 0.0) - (first or 0.0)
    return (n - 1) / span if n > 1 and span > 0 else None


def rounded(value: float | None, digits: int = 3) -> float | None:
    """``value`` rounded for JSON; None for None, NaN and infinities."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), digits)


def capped_by_concurrency(
    rate: float | None, concurrency: int | None, sends: Sends
) -> dict[str, Any] | None:
    """``{"concurrency", "waited"}`` when an open-loop rate was held back by the concurrency
    cap (sends waited for a free slot), else None."""
    if rate is None or concurrency is None or not sends.waited_for_slot:
        return None
    return {"concurrency": concurrency, "waited": sends.waited_for_slot}


def load_summary(
    stats: RecordStats,
    sends: Sends,
    *,
    requested_rate: float | None,
    concurrency: int | None,
    end_s: float,
    expected: Mapping[str, Any] | None = None,
) -> Summary:
    """The contract's blocks of a load that ran ``end_s`` seconds (``stats`` fed with finish
    times from the start). ``requested_rate`` is None for a closed loop, whose achieved rate is
    its completions per second; ``expected`` is what the open-loop schedule should have sent
    (``{"mean", "low", "high"}``)."""
    elapsed = end_s if end_s > 0 else math.nan
    completed = stats.counts["ok"]
    scheduled: float | None = None
    achieved: float | None
    if requested_rate is not None:
        achieved, scheduled = sends.rate(), sends.scheduled_rate()
    else:
        achieved = completed / elapsed if elapsed > 0 else None
    blocks = stats.summary(elapsed, end_s=end_s)
    return {
        "requests": {
            "completed": completed,
            "failed": stats.counts["failed"],
            "stalled": stats.counts["stalled"],
            "aborted": stats.counts["aborted"],
            "sent": sends.count,
        },
        "throughput": blocks["throughput"],
        "rate": {
            "requested": requested_rate,
            "achieved": rounded(achieved),
            "scheduled": rounded(scheduled),
            "achieved_over_requested": rounded(achieved / requested_rate)
            if achieved is not None and requested_rate
            else None,
            "send_lag_ms": sends.lag_ms.summary() if requested_rate is not None else None,
            "expected_sent": expected["mean"] if expected else None,
            "expected_sent_range": [expected["low"], expected["high"]] if expected else None,
            "capped_by_concurrency": capped_by_concurrency(requested_rate, concurrency, sends),
        },
        "latency_ms": blocks["latency_ms"],
        "goodput": blocks["goodput"],
        "windows": blocks["windows"],
        "errors": blocks["errors"],
        "tokens": blocks["tokens"],
    }

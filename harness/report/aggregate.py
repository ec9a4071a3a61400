"""``requests.jsonl`` records -> the blocks of ``summary.json`` (pure).

A campaign's numbers are recomputed from the records it appended (never from a segment's own
summary), so that a soak restarted after every hang, or resumed after harness itself was killed,
still reports one set of percentiles, throughput and time windows over the whole campaign.
Memory is bounded: latencies go into :class:`~harness.report.stats.Distribution` and closed
windows are reduced as the records stream by (records are in finish order, roughly).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from typing import Any

from harness.report.stats import Distribution, Slo, WindowSeries, auto_window_s, goodput

Record = Mapping[str, Any]
#: Per-request samples kept per metric for tests and CDFs (a uniform sample beyond this).
MAX_SAMPLES = 200_000
STATUSES = ("ok", "failed", "stalled", "aborted")


def finished_at(record: Record) -> float | None:
    """Wall-clock time a request ended: its send time plus how long it lasted."""
    sent = record.get("sent_at")
    if not isinstance(sent, int | float):
        return None
    duration = record.get("duration_ms")
    return float(sent) + (float(duration) / 1000.0 if isinstance(duration, int | float) else 0.0)


class RecordStats:
    """Aggregates of finished requests; feed with :meth:`add`, read with :meth:`summary`.

    ``t0`` is the wall-clock start of the campaign (window times are seconds from it). The
    load runner feeds it as requests finish, with its own clock (``add(record, at_s=...)``),
    and builds ``summary.json`` from it (:mod:`harness.report.loadsummary`); campaigns and
    reports feed it the records of ``requests.jsonl``.
    """

    def __init__(
        self,
        t0: float,
        *,
        window_s: float,
        slo: Slo | None = None,
        keep_samples: bool = False,
        max_samples: int = MAX_SAMPLES,
    ) -> None:
        self.t0 = t0
        self.slo = slo or Slo()
        self.latency = {name: Distribution() for name in ("ttft", "itl", "tpot", "e2e")}
        self.counts = dict.fromkeys(STATUSES, 0)
        self.errors: dict[str, int] = {}
        self.output_tokens = 0
        self.prompt_tokens = 0
        self.good = 0
        self.windows = WindowSeries(window_s, self.slo)
        self.first_sent: float | None = None
        self.last_end: float | None = None
        self.max_index = -1
        self.last_at_s: float | None = None  # the latest finish, in seconds from t0
        # Per-request samples for significance tests and CDF plots (only when asked).
        self.samples: dict[str, list[float]] | None = (
            {name: [] for name in self.latency} if keep_samples else None
        )
        self.max_samples = max_samples
        self._rng = random.Random(0)  # reservoir sampling past max_samples, reproducibly
        self._window = 0

    def add(self, record: Record, at_s: float | None = None) -> None:
        """Account one finished request (a ``requests.jsonl`` line). ``at_s``: when it
        finished, in seconds from ``t0`` (default: its ``sent_at`` plus its duration)."""
        status = str(record.get("status"))
        self.counts[status] = self.counts.get(status, 0) + 1
        index = record.get("index")
        if isinstance(index, int) and index > self.max_index:
            self.max_index = index
        if record.get("error"):
            key = str(record["error"])
            self.errors[key] = self.errors.get(key, 0) + 1
        sent = record.get("sent_at")
        if isinstance(sent, int | float) and (self.first_sent is None or sent < self.first_sent):
            self.first_sent = float(sent)
        end = finished_at(record)
        if end is not None and (self.last_end is None or end > self.last_end):
            self.last_end = end
        if status == "ok":
            self.output_tokens += int(record.get("output_tokens") or 0)
            self.prompt_tokens += int(record.get("prompt_tokens") or 0)
            for name, key in (("ttft", "ttft_ms"), ("tpot", "tpot_ms"), ("e2e", "e2e_ms")):
                value = record.get(key)
                if isinstance(value, int | float):
                    self._sample(name, float(value))
            for gap in record.get("itl_ms") or ():
                self._sample("itl", float(gap))
            if self.slo.active and self.slo.met(record):
                self.good += 1
        if at_s is None and end is not None:
            at_s = end - self.t0
        if at_s is not None:
            offset = max(0.0, at_s)
            self.last_at_s = offset if self.last_at_s is None else max(self.last_at_s, offset)
            self.windows.add(offset, record)
            index_now = int(offset // self.windows.width_s)
            if index_now > self._window:
                self._window = index_now
                self.windows.close_before(offset - self.windows.width_s)

    def _sample(self, name: str, value: float) -> None:
        dist = self.latency[name]
        dist.add(value)
        if self.samples is None:
            return
        kept = self.samples[name]
        if len(kept) < self.max_samples:
            kept.append(value)
        else:
            # Reservoir sampling: every sample so far has the same chance to be kept.
            slot = self._rng.randrange(dist.count)
            if slot < self.max_samples:
                kept[slot] = value

    def extend(self, records: Iterable[Record]) -> RecordStats:
        for record in records:
            self.add(record)
        return self

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    def summary(
        self, elapsed_s: float | None = None, *, end_s: float | None = None
    ) -> dict[str, Any]:
        """The contract's blocks (``requests``, ``throughput``, ``latency_ms``, ``windows``,
        ...) over ``elapsed_s`` (default: first send to last finish); the windows run to
        ``end_s`` seconds from ``t0`` (default: the last finish)."""
        if elapsed_s is None:
            span = (
                (self.last_end - self.first_sent)
                if self.last_end is not None and self.first_sent is not None
                else 0.0
            )
            elapsed_s = span
        elapsed = elapsed_s if elapsed_s and elapsed_s > 0 else math.nan
        completed = self.counts["ok"]

        def per_s(n: float) -> float | None:
            return round(n / elapsed, 3) if elapsed == elapsed else None

        out: dict[str, Any] = {
            "requests": {
                "completed": completed,
                "failed": self.counts["failed"],
                "stalled": self.counts["stalled"],
                "aborted": self.counts["aborted"],
                "finished": self.finished,
            },
            "throughput": {
                "requests_per_s": per_s(completed),
                "output_tokens_per_s": per_s(self.output_tokens),
                "prompt_tokens_per_s": per_s(self.prompt_tokens),
            },
            "latency_ms": {name: dist.summary() for name, dist in self.latency.items()},
            "goodput": goodput(self.good, elapsed, self.finished, self.slo)
            if self.slo.active and elapsed == elapsed
            else None,
            "windows": self.windows.series(end_s=end_s if end_s is not None else self.last_at_s),
            "errors": dict(sorted(self.errors.items())),
            "tokens": {"output": self.output_tokens, "prompt": self.prompt_tokens},
        }
        return out


def summarize_records(
    records: Iterable[Record],
    *,
    t0: float,
    elapsed_s: float | None = None,
    window_s: float | None = None,
    slo: Slo | None = None,
) -> dict[str, Any]:
    """One pass over ``records`` -> the summary blocks (see :class:`RecordStats`)."""
    stats = RecordStats(t0, window_s=window_s or auto_window_s(elapsed_s), slo=slo)
    return stats.extend(records).summary(elapsed_s)

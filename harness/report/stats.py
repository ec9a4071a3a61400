"""Pure statistics for load runs: percentiles, streaming distributions, windows, goodput.

Nothing here does I/O. :class:`Distribution` keeps memory bounded over runs of any length: it is
exact (every sample kept) up to ``exact_limit`` samples and then folds everything into a
log-bucketed histogram whose percentiles are within ``1 %`` relative error; the mean, minimum,
maximum and count stay exact. That is how a 24-hour soak keeps flat memory and still reports
p99.9.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The percentiles every latency in ``summary.json`` reports (docs/architecture.md).
QUANTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p999", 99.9),
)

#: Relative width of a histogram bucket once a distribution stops being exact.
_BUCKET_RATIO = 1.01
_LOG_RATIO = math.log(_BUCKET_RATIO)


def _round(value: float) -> float:
    return round(float(value), 3)


def percentiles(values: Sequence[float] | np.ndarray[Any, Any]) -> dict[str, float | None]:
    """``{"mean", "p50", "p90", "p99", "p999"}`` of ``values`` (linear interpolation).

    An empty input gives ``None`` for every key, so a run without a single completed request
    still writes a well-formed summary.
    """
    keys = ["mean", *(name for name, _ in QUANTILES)]
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return dict.fromkeys(keys, None)
    qs = np.percentile(arr, [q for _, q in QUANTILES])
    out: dict[str, float | None] = {"mean": _round(float(arr.mean()))}
    for (name, _), value in zip(QUANTILES, qs, strict=True):
        out[name] = _round(float(value))
    return out


@dataclass
class Distribution:
    """A bounded-memory distribution of non-negative samples (milliseconds, tokens, ...)."""

    exact_limit: int = 20_000
    count: int = 0
    total: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    _exact: list[float] | None = field(default_factory=list)
    _buckets: dict[int, int] = field(default_factory=dict)
    _zeros: int = 0

    def add(self, value: float) -> None:
        """Add one sample."""
        self.count += 1
        self.total += value
        if value < self.minimum:
            self.minimum = value
        if value > self.maximum:
            self.maximum = value
        if self._exact is not None:
            self._exact.append(value)
            if len(self._exact) > self.exact_limit:
                exact, self._exact = self._exact, None
                for v in exact:
                    self._bucket(v)
        else:
            self._bucket(value)

    def extend(self, values: Iterable[float]) -> None:
        for value in values:
            self.add(value)

    def _bucket(self, value: float) -> None:
        if value <= 0.0:
            self._zeros += 1
            return
        key = math.floor(math.log(value) / _LOG_RATIO)
        self._buckets[key] = self._buckets.get(key, 0) + 1

    @property
    def exact(self) -> bool:
        """True while every sample is still kept (percentiles are then exact)."""
        return self._exact is not None

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """The ``q``-th percentile (0..100)."""
        if self.count == 0:
            return None
        if self._exact is not None:
            return float(np.percentile(np.asarray(self._exact, dtype=float), q))
        rank = q / 100.0 * (self.count - 1)
        seen = self._zeros
        if rank < seen:
            return 0.0
        for key in sorted(self._buckets):
            seen += self._buckets[key]
            if rank < seen:
                # Geometric middle of the bucket, clamped to what was actually seen.
                mid = math.exp((key + 0.5) * _LOG_RATIO)
                return min(max(mid, self.minimum), self.maximum)
        return self.maximum

    def summary(self) -> dict[str, float | None]:
        """The ``{"mean", "p50", "p90", "p99", "p999"}`` block of ``summary.json``."""
        if self.count == 0:
            return percentiles([])
        if self._exact is not None:
            return percentiles(self._exact)
        out: dict[str, float | None] = {"mean": _round(self.total / self.count)}
        for name, q in QUANTILES:
            value = self.quantile(q)
            out[name] = None if value is None else _round(value)
        return out


@dataclass(frozen=True)
class Slo:
    """Service-level objectives for goodput; ``None`` means "not constrained"."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2e_ms))

    def met(self, record: Mapping[str, Any]) -> bool:
        """True when a finished request is ``ok`` and within every SLO given."""
        if record.get("status") != "ok":
            return False
        for key, limit in (
            ("ttft_ms", self.ttft_ms),
            ("tpot_ms", self.tpot_ms),
            ("e2e_ms", self.e2e_ms),
        ):
            if limit is None:
                continue
            value = record.get(key)
            if value is None and key == "tpot_ms":
                continue  # a one-token answer has no TPOT; it cannot violate it
            if value is None or float(value) > limit:
                return False
        return True

    def to_dict(self) -> dict[str, float | None]:
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2e_ms": self.e2e_ms}


@dataclass
class _Window:
    start_s: float
    completed: int = 0
    failed: int = 0
    stalled: int = 0
    aborted: int = 0
    output_tokens: int = 0
    good: int = 0
    ttft: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)


class WindowSeries:
    """Per-window counts and latencies keyed by a request's finish time (seconds from start).

    Only the windows still open keep their samples; a closed window is reduced to a small dict,
    so memory grows with the number of windows, not of requests.
    """

    def __init__(self, width_s: float, slo: Slo | None = None) -> None:
        if width_s <= 0:
            raise ValueError("window width must be positive")
        self.width_s = width_s
        self.slo = slo or Slo()
        self._open: dict[int, _Window] = {}
        self._closed: dict[int, dict[str, Any]] = {}

    def add(self, finished_s: float, record: Mapping[str, Any]) -> None:
        """Account one finished request (``status``, ``ttft_ms``, ``e2e_ms``, ``output_tokens``)."""
        index = max(0, int(finished_s // self.width_s))
        window = self._open.get(index)
        if window is None:
            if index in self._closed:
                # A straggler for a window already closed: reopen it from its reduced form.
                window = self._reopen(index)
            else:
                window = _Window(start_s=index * self.width_s)
            self._open[index] = window
        status = record.get("status")
        if status == "ok":
            window.completed += 1
            window.output_tokens += int(record.get("output_tokens") or 0)
            if record.get("ttft_ms") is not None:
                window.ttft.append(float(record["ttft_ms"]))
            if record.get("e2e_ms") is not None:
                window.e2e.append(float(record["e2e_ms"]))
            if self.slo.active and self.slo.met(record):
                window.good += 1
        elif status == "stalled":
            window.stalled += 1
        elif status == "aborted":
            window.aborted += 1
        else:
            window.failed += 1

    def close_before(self, now_s: float) -> None:
        """Reduce every window that ended before ``now_s`` (call it now and then)."""
        for index in [i for i in self._open if (i + 1) * self.width_s <= now_s]:
            self._closed[index] = self._reduce(self._open.pop(index))

    def _reduce(self, w: _Window) -> dict[str, Any]:
        out: dict[str, Any] = {
            "start_s": _round(w.start_s),
            "end_s": _round(w.start_s + self.width_s),
            "completed": w.completed,
            "failed": w.failed,
            "stalled": w.stalled,
            "aborted": w.aborted,
            "requests_per_s": _round(w.completed / self.width_s),
            "output_tokens_per_s": _round(w.output_tokens / self.width_s),
            "ttft_ms": _pick(percentiles(w.ttft), ("mean", "p50", "p99")),
            "e2e_ms": _pick(percentiles(w.e2e), ("mean", "p50", "p99")),
            "_output_tokens": w.output_tokens,
        }
        if self.slo.active:
            out["goodput_requests_per_s"] = _round(w.good / self.width_s)
            out["_good"] = w.good
        return out

    def _reopen(self, index: int) -> _Window:
        reduced = self._closed.pop(index)
        # Latency samples of a closed window are gone; counts are kept exactly.
        return _Window(
            start_s=index * self.width_s,
            completed=reduced["completed"],
            failed=reduced["failed"],
            stalled=reduced["stalled"],
            aborted=reduced["aborted"],
            output_tokens=reduced["_output_tokens"],
            good=reduced.get("_good", 0),
        )

    def series(self, end_s: float | None = None) -> list[dict[str, Any]]:
        """All windows in order, the last one trimmed to ``end_s`` for its rates."""
        self.close_before(math.inf)
        out = []
        for index in sorted(self._closed):
            window = {k: v for k, v in self._closed[index].items() if not k.startswith("_")}
            if end_s is not None and window["start_s"] < end_s < window["end_s"]:
                width = end_s - window["start_s"]
                if width > 0:
                    window["end_s"] = _round(end_s)
                    window["requests_per_s"] = _round(window["completed"] / width)
                    tokens = self._closed[index]["_output_tokens"]
                    window["output_tokens_per_s"] = _round(tokens / width)
                    if "_good" in self._closed[index]:
                        window["goodput_requests_per_s"] = _round(
                            self._closed[index]["_good"] / width
                        )
            out.append(window)
        return out


def _pick(d: Mapping[str, float | None], keys: Sequence[str]) -> dict[str, float | None]:
    return {k: d[k] for k in keys}


def auto_window_s(duration_s: float | None) -> float:
    """A window width giving roughly 20 to 60 points: 1 s for short runs, up to 10 minutes."""
    if duration_s is None or duration_s <= 0:
        return 10.0
    for width in (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0):
        if duration_s / width <= 60:
            return width
    return 600.0


def goodput(good: int, elapsed_s: float, finished: int, slo: Slo) -> dict[str, Any]:
    """The ``goodput`` block: requests/s meeting every SLO and their share of finished ones."""
    return {
        "slo": slo.to_dict(),
        "requests_per_s": _round(good / elapsed_s) if elapsed_s > 0 else None,
        "good": good,
        "fraction": _round(good / finished) if finished else None,
    }

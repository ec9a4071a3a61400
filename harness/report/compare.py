"""A compare campaign's numbers (pure): per cell, and every cell against the baseline.

Input per cell: its repeats, each with the startup outcome and time, the load summary, the
incidents, and the records streamed into a :class:`~harness.report.aggregate.RecordStats` that
keeps per-request samples. Output: the ``compare`` block of ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.report.aggregate import RecordStats
from harness.report.intervals import wilson
from harness.report.significance import (
    Difference,
    adjust,
    compare_counts,
    compare_repeats,
    compare_samples,
)
from harness.report.startup import distribution

LATENCIES = ("ttft", "tpot", "itl", "e2e")


@dataclass
class CellData:
    """Everything measured for one cell (all repeats)."""

    key: str
    label: str
    engine: str
    tp: int
    profiles: list[str]
    stats: RecordStats
    repeats: Sequence[Mapping[str, Any]] = field(default_factory=list)

    @property
    def hung_repeats(self) -> int:
        return sum(
            1 for r in self.repeats if r.get("hang") or r.get("startup") in ("hang", "crash")
        )

    def per_repeat(self, block: str, key: str) -> list[float]:
        out = []
        for r in self.repeats:
            value = ((r.get("load") or {}).get(block) or {}).get(key)
            if isinstance(value, int | float):
                out.append(float(value))
        return out

    def ready_s(self) -> list[float]:
        return [float(r["ready_s"]) for r in self.repeats if r.get("ready_s") is not None]


def cell_summary(cell: CellData) -> dict[str, Any]:
    """One cell's block: throughput, latency percentiles, goodput, rates with intervals."""
    s = cell.stats
    finished = s.finished
    summary = s.summary()
    n = len(cell.repeats)
    return {
        "key": cell.key,
        "label": cell.label,
        "engine": cell.engine,
        "tp": cell.tp,
        "profiles": cell.profiles,
        "repeats": n,
        "requests": summary["requests"],
        "throughput": {
            "output_tokens_per_s": distribution(
                cell.per_repeat("throughput", "output_tokens_per_s")
            ),
            "requests_per_s": distribution(cell.per_repeat("throughput", "requests_per_s")),
        },
        "latency_ms": summary["latency_ms"],
        "goodput": summary["goodput"],
        "error_rate": wilson(s.counts["failed"], finished).to_dict(),
        "stall_rate": wilson(s.counts["stalled"], finished).to_dict(),
        "hang_rate": wilson(cell.hung_repeats, n).to_dict(),
        "hangs": cell.hung_repeats,
        "startup_s": distribution(cell.ready_s()),
        "errors": summary["errors"],
    }


def compare_cells(baseline: CellData, other: CellData) -> list[Difference]:
    """Every metric of ``other`` against ``baseline`` (p-values not yet adjusted)."""
    diffs: list[Difference] = []
    a, b = baseline.stats.samples or {}, other.stats.samples or {}
    for name in LATENCIES:
        if a.get(name) or b.get(name):
            diffs.append(compare_samples(f"{name}_ms", a.get(name, []), b.get(name, [])))
    for key in ("output_tokens_per_s", "requests_per_s"):
        diffs.append(
            compare_repeats(
                key, baseline.per_repeat("throughput", key), other.per_repeat("throughput", key)
            )
        )
    diffs.append(compare_repeats("startup_s", baseline.ready_s(), other.ready_s()))
    for status in ("failed", "stalled"):
        diffs.append(
            compare_counts(
                f"{status}_rate",
                (baseline.stats.counts[status], baseline.stats.finished),
                (other.stats.counts[status], other.stats.finished),
            )
        )
    diffs.append(
        compare_counts(
            "hang_rate",
            (baseline.hung_repeats, len(baseline.repeats)),
            (other.hung_repeats, len(other.repeats)),
        )
    )
    return diffs


def compare_summary(cells: Sequence[CellData]) -> dict[str, Any]:
    """The ``compare`` block: cells, and each cell after the first against the first."""
    if not cells:
        return {"cells": [], "baseline": None, "comparisons": []}
    baseline = cells[0]
    tables = [(other, compare_cells(baseline, other)) for other in cells[1:]]
    # One false-discovery adjustment over every test of the campaign.
    flat = adjust([d for _, diffs in tables for d in diffs])
    comparisons = []
    i = 0
    for other, diffs in tables:
        adjusted = flat[i : i + len(diffs)]
        i += len(diffs)
        comparisons.append(
            {
                "baseline": baseline.key,
                "cell": other.key,
                "label": f"{other.label} vs {baseline.label}",
                "differences": [d.to_dict() for d in adjusted],
            }
        )
    return {
        "baseline": baseline.key,
        "cells": [cell_summary(c) for c in cells],
        "comparisons": comparisons,
    }

"""The ``startup`` block of a repro-startup campaign's ``summary.json`` (pure).

Input: one record per cold start (``starts.jsonl``): ``outcome`` (``healthy``, ``hang``,
``crash``), ``ready_s`` (time to healthy), ``phases`` (phase name -> seconds after launch when
the log showed it) and ``last_phase``. Output: the hang rate with its 95 % Wilson interval, the
crash rate, the distribution of the time to healthy, per phase the distribution of when it was
reached, and where the hung starts stopped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from harness.report.intervals import wilson
from harness.report.stats import percentiles

Start = Mapping[str, Any]


def distribution(values: Sequence[float]) -> dict[str, Any]:
    """``n``, ``min``, ``max`` and the percentiles of ``values`` (seconds)."""
    arr = np.asarray(values, dtype=float)
    out: dict[str, Any] = {"n": int(arr.size)}
    out["min"] = round(float(arr.min()), 3) if arr.size else None
    out["max"] = round(float(arr.max()), 3) if arr.size else None
    out.update(percentiles(arr))
    return out


def startup_summary(starts: Iterable[Start], phase_order: Sequence[str] = ()) -> dict[str, Any]:
    """Summarise the starts done so far (an interrupted campaign summarises what ran)."""
    done = [s for s in starts if s.get("outcome") in ("healthy", "hang", "crash")]
    n = len(done)
    hangs = sum(1 for s in done if s["outcome"] == "hang")
    crashes = sum(1 for s in done if s["outcome"] == "crash")
    hang_rate = wilson(hangs, n)
    crash_rate = wilson(crashes, n)
    ready = [float(s["ready_s"]) for s in done if s["outcome"] == "healthy" and s.get("ready_s")]
    reached: dict[str, list[float]] = {}
    for s in done:
        for name, at in (s.get("phases") or {}).items():
            reached.setdefault(name, []).append(float(at))
    ordered = [p for p in phase_order if p in reached] + sorted(
        p for p in reached if p not in phase_order
    )
    stuck_after = Counter(
        str(s.get("last_phase") or "launch") for s in done if s["outcome"] == "hang"
    )
    return {
        "runs": n,
        "healthy": n - hangs - crashes,
        "hangs": hangs,
        "crashes": crashes,
        "rate": None if hang_rate.value is None else round(hang_rate.value, 4),
        "ci95": hang_rate.to_dict()["ci95"],
        "crash_rate": crash_rate.to_dict(),
        "ready_s": distribution(ready),
        "phases": {name: distribution(reached[name]) for name in ordered},
        "hangs_after_phase": dict(stuck_after.most_common()),
    }

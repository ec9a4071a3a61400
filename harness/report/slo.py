"""Service-level objectives for ``--max-rate-under-slo`` (pure): parsing and the pass test.

``ttft=500ms,tpot=50ms`` means: the 99th percentile of TTFT at most 500 ms and of TPOT at most
50 ms (``ttft@p90=500ms`` picks another percentile; ``s`` and ``ms`` units). A probe *passes*
when every criterion holds, no request stalled, at most 1 % failed, and the load generator
achieved at least 90 % of the requested rate (a server that cannot even take the requests does
not "sustain" the rate, whatever its latencies).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.errors import BadInput

METRICS = ("ttft", "tpot", "itl", "e2e")
PERCENTILES = {"p50": "p50", "p90": "p90", "p99": "p99", "p999": "p999", "mean": "mean"}
_ITEM = re.compile(
    r"^\s*(?P<metric>[a-z][a-z0-9]*)(?:@(?P<pct>[a-z0-9]+))?\s*=\s*(?P<value>\d+(?:\.\d*)?)\s*(?P<unit>ms|s)?\s*$"
)
MAX_FAILED_FRACTION = 0.01
MIN_ACHIEVED_FRACTION = 0.9


@dataclass(frozen=True)
class Criterion:
    """``percentile`` of ``metric`` at most ``limit_ms``."""

    metric: str
    percentile: str
    limit_ms: float

    def __str__(self) -> str:
        return f"{self.metric} {self.percentile} <= {self.limit_ms:g} ms"


def parse_slo(text: str) -> tuple[Criterion, ...]:
    """Parse ``ttft=500ms,tpot=50ms`` (BadInput naming the valid metrics and units)."""
    criteria = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        m = _ITEM.match(item)
        if not m or m["metric"] not in METRICS:
            raise BadInput(
                f"--max-rate-under-slo: {item!r} is not METRIC[@PCT]=VALUE[ms|s] with METRIC one "
                f"of {', '.join(METRICS)} (e.g. ttft=500ms,tpot=50ms or e2e@p90=2s)"
            )
        pct = m["pct"] or "p99"
        if pct not in PERCENTILES:
            raise BadInput(
                f"--max-rate-under-slo: percentile {pct!r} in {item!r}; valid: "
                + ", ".join(PERCENTILES)
            )
        value = float(m["value"]) * (1000.0 if m["unit"] == "s" else 1.0)
        if value <= 0:
            raise BadInput(f"--max-rate-under-slo: {item!r} must be a positive limit")
        criteria.append(Criterion(m["metric"], pct, value))
    if not criteria:
        raise BadInput("--max-rate-under-slo needs at least one criterion, e.g. ttft=500ms")
    return tuple(criteria)


def check_probe(
    criteria: tuple[Criterion, ...], summary: Mapping[str, Any], requested_rate: float
) -> tuple[bool, list[str]]:
    """Whether a load summary meets the SLO at ``requested_rate``, with the reasons it does not."""
    reasons: list[str] = []
    latency = summary.get("latency_ms", {})
    for c in criteria:
        value = (latency.get(c.metric) or {}).get(c.percentile)
        if value is None:
            reasons.append(f"no {c.metric} measured")
        elif value > c.limit_ms:
            reasons.append(f"{c.metric} {c.percentile} {value:.0f} ms > {c.limit_ms:g} ms")
    req = summary.get("requests", {})
    finished = sum(int(req.get(k) or 0) for k in ("completed", "failed", "stalled", "aborted"))
    if req.get("stalled"):
        reasons.append(f"{req['stalled']} request(s) stalled")
    if finished and int(req.get("failed") or 0) / finished > MAX_FAILED_FRACTION:
        reasons.append(f"{req['failed']} of {finished} requests failed")
    achieved = (summary.get("rate") or {}).get("achieved")
    if achieved is not None and achieved < MIN_ACHIEVED_FRACTION * requested_rate:
        reasons.append(f"achieved {achieved:.2f} of {requested_rate:.2f} req/s")
    return not reasons, reasons

"""The highest request rate a server sustains within an SLO (I/O: it sends load).

Like ``vllm bench sweep serve_sla`` (which searches ``request_rate`` for the largest value
meeting criteria such as ``p99_e2el_ms <= 500``), but bounded so it fits in a campaign cell:
start from the throughput the cell's main load achieved, double (or halve) until the SLO flips,
then bisect in log space until the bracket is within 15 % or ``max_probes`` runs were spent.
Each probe is a short open-loop Poisson run (about 20 s of requests, 20 to 200 of them) on the
same, already warm server; its records go to ``<out_dir>/<n>-rate<r>/``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.campaign.base import Progress
from harness.campaign.loadplan import LoadPlan
from harness.campaign.session import raise_for_signal, run_load_interruptibly
from harness.load.runner import LoadRunner
from harness.report.slo import Criterion, check_probe
from harness.runtime.base import ServerHandle

PROBE_SECONDS = 20.0
MIN_PROBE_REQUESTS = 20
MAX_PROBE_REQUESTS = 200
MIN_RATE = 0.05
BRACKET_RATIO = 1.15


def probe_requests(rate: float, seconds: float = PROBE_SECONDS) -> int:
    """How many requests a probe at ``rate`` sends (about ``seconds`` worth)."""
    return int(min(MAX_PROBE_REQUESTS, max(MIN_PROBE_REQUESTS, round(rate * seconds))))


def next_rate(passing: float | None, failing: float | None, tried: float) -> float | None:
    """The next rate to try given the best passing and the lowest failing rate so far (pure);
    None when the bracket is tight enough."""
    if passing is None and failing is None:
        return tried
    if failing is None:
        return (passing or tried) * 2.0
    if passing is None:
        half = failing / 2.0
        return half if half >= MIN_RATE else None
    if failing / passing <= BRACKET_RATIO:
        return None
    return math.sqrt(passing * failing)


def search_max_rate(
    handle: ServerHandle,
    plan: LoadPlan,
    criteria: tuple[Criterion, ...],
    *,
    start_rate: float | None,
    out_dir: Path,
    max_probes: int = 7,
    probe_s: float = PROBE_SECONDS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Probe ``handle``'s server; returns ``{"max_rate", "criteria", "probes": [...]}``."""
    spec = handle.spec
    passing: float | None = None
    failing: float | None = None
    probes: list[dict[str, Any]] = []
    rate: float | None = max(MIN_RATE, float(start_rate or 1.0))
    for n in range(1, max_probes + 1):
        if rate is None or handle.poll() is not None:
            break
        rate = round(rate, 3)
        requests = probe_requests(rate, probe_s)
        config = plan.config(spec, requests=requests, rate=rate, duration_s=None)
        config.concurrency = None  # open loop: the rate is what is searched
        runner = LoadRunner(config, base_url=spec.base_url, out_dir=out_dir / f"{n}-rate{rate:g}")
        if progress is not None:
            progress.phase = f"SLO search: probe {n} at {rate:g} req/s"
            progress.runner = runner
            progress.requests_target = requests
        summary, signum = run_load_interruptibly(runner)
        raise_for_signal(signum)
        ok, reasons = check_probe(criteria, summary, rate)
        probes.append(
            {
                "rate": rate,
                "requests": requests,
                "passed": ok,
                "reasons": reasons,
                "achieved": (summary.get("rate") or {}).get("achieved"),
                "latency_ms": {
                    c.metric: (summary.get("latency_ms", {}).get(c.metric) or {}).get(c.percentile)
                    for c in criteria
                },
            }
        )
        if ok:
            passing = rate if passing is None else max(passing, rate)
        else:
            failing = rate if failing is None else min(failing, rate)
        rate = next_rate(passing, failing, rate)
    if progress is not None:
        progress.runner = None
    return {
        "max_rate": passing,
        "lowest_failing_rate": failing,
        "criteria": [str(c) for c in criteria],
        "probes": probes,
    }

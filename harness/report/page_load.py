"""The report pages of a soak and of a plain run: load over time with incidents marked."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.records import iter_jsonl, read_json
from harness.report import charts
from harness.report.aggregate import RecordStats
from harness.report.compare import LATENCIES
from harness.report.document import Chart, Document, Section, Table
from harness.report.format import (
    common_facts,
    engine_tp,
    engine_tp_profiles,
    f_est,
    f_ms,
    f_num,
    incident_rows,
)
from harness.report.stats import auto_window_s


def build_soak(run_path: Path, campaign: dict[str, Any], summary: dict[str, Any]) -> Document:
    options = campaign.get("options", {})
    soak = summary.get("soak", {})
    req = summary.get("requests", {})
    verdict = (
        f"{soak.get('incidents', 0)} incident(s) in {f_num(soak.get('elapsed_s'))} s and "
        f"{req.get('finished', 0)} requests: {f_est(soak.get('hangs_per_1000_requests'))} per "
        f"1,000 requests, {f_est(soak.get('hangs_per_hour'))} per hour"
    )
    load = options.get("load", {})
    doc = Document(
        title=f"soak {campaign.get('id', run_path.name)}: {engine_tp(options)}",
        verdict=verdict,
        bad=bool(soak.get("incidents")),
        facts=[
            ("model", str(options.get("model"))),
            (
                "engine / TP / profiles",
                engine_tp_profiles(options),
            ),
            (
                "duration asked / run",
                f"{options.get('duration_s')} s / {f_num(soak.get('elapsed_s'))} s",
            ),
            (
                "load",
                f"workload {load.get('workload')}, seed {load.get('seed')}, "
                + (
                    f"rate {load.get('rate')}/s"
                    if load.get("rate")
                    else f"concurrency {load.get('concurrency')}"
                ),
            ),
            (
                "restarts / failed starts / resumes",
                f"{soak.get('restarts')} / {soak.get('failed_starts')} / {soak.get('resumes')}",
            ),
            *common_facts(campaign),
        ],
    )
    doc.sections.append(
        _load_section(
            run_path,
            summary,
            marks=[
                (m["at_s"], f"#{m['incident']} {m['kind']}")
                for m in soak.get("incident_marks", [])
                if m.get("at_s") is not None
            ],
        )
    )
    marks = soak.get("incident_marks", [])
    doc.sections.append(
        Section(
            "Incidents",
            [] if marks else ["No incident."],
            [incident_rows(run_path, [f"incidents/{m['incident']}" for m in marks])]
            if marks
            else [],
        )
    )
    return doc


def _load_section(
    run_path: Path, summary: Mapping[str, Any], *, marks: list[tuple[float, str]]
) -> Section:
    """Latency table, CDFs from the records, and throughput / latency over time."""
    lat = summary.get("latency_ms", {})
    table = Table(["ms", "mean", "p50", "p90", "p99", "p99.9"], [])
    for name in LATENCIES:
        row = lat.get(name) or {}
        table.rows.append(
            [name.upper(), *(f_ms(row.get(k)) for k in ("mean", "p50", "p90", "p99", "p999"))]
        )
    req = summary.get("requests", {})
    thr = summary.get("throughput", {})
    counts = Table(
        ["completed", "failed", "stalled", "aborted", "req/s", "output tok/s"],
        [
            [str(req.get(k, 0)) for k in ("completed", "failed", "stalled", "aborted")]
            + [f_num(thr.get("requests_per_s"), 4), f_num(thr.get("output_tokens_per_s"), 4)]
        ],
    )
    section = Section("Load", [], [counts, table])
    stats = RecordStats(0.0, window_s=auto_window_s(None), keep_samples=True)
    stats.extend(iter_jsonl(run_path / "requests.jsonl"))
    samples = stats.samples or {}
    section.charts.append(
        Chart(
            "Latency CDFs",
            charts.cdf(
                {name.upper(): samples.get(name, []) for name in ("ttft", "e2e")},
                title="TTFT and E2E latency (CDF)",
                xlabel="ms",
                log_x=True,
            ),
        )
    )
    windows = summary.get("windows", [])
    if windows:
        section.charts.append(
            Chart(
                "Throughput over time",
                charts.timeline(
                    {
                        "output tokens/s": [
                            (w["start_s"], w.get("output_tokens_per_s")) for w in windows
                        ]
                    },
                    title="Throughput over time (incidents marked)",
                    ylabel="tokens/s",
                    marks=marks,
                ),
            )
        )
        section.charts.append(
            Chart(
                "Latency over time",
                charts.timeline(
                    {
                        "TTFT p50": [
                            (w["start_s"], (w.get("ttft_ms") or {}).get("p50")) for w in windows
                        ],
                        "TTFT p99": [
                            (w["start_s"], (w.get("ttft_ms") or {}).get("p99")) for w in windows
                        ],
                        "E2E p50": [
                            (w["start_s"], (w.get("e2e_ms") or {}).get("p50")) for w in windows
                        ],
                    },
                    title="Latency over time (incidents marked)",
                    ylabel="ms",
                    marks=marks,
                ),
            )
        )
        section.charts.append(
            Chart(
                "Failures over time",
                charts.timeline(
                    {
                        kind: [(w["start_s"], w.get(kind)) for w in windows]
                        for kind in ("failed", "stalled", "aborted")
                    },
                    title="Failed, stalled and aborted requests per window",
                    ylabel="requests",
                    marks=marks,
                ),
            )
        )
    return section


def build_run(run_path: Path, campaign: dict[str, Any], summary: dict[str, Any]) -> Document:
    spec = read_json(run_path / "launch_spec.json")
    incidents = sorted(
        (p.parent for p in run_path.glob("incidents/*/incident.json")),
        key=lambda p: int(p.name) if p.name.isdigit() else 0,
    )
    req = summary.get("requests", {})
    verdict = f"{len(incidents)} incident(s)" + (
        f"; {req.get('completed', 0)} requests ok, {req.get('failed', 0)} failed, "
        f"{req.get('stalled', 0)} stalled"
        if req
        else ""
    )
    doc = Document(
        title=f"run {run_path.name}",
        verdict=verdict,
        bad=bool(incidents),
        facts=[
            (k, str(spec.get(k)))
            for k in ("engine", "model", "tp", "profiles", "runtime")
            if k in spec
        ]
        + [
            ("base URL", str((summary.get("run") or {}).get("base_url", spec.get("base_url", "-"))))
        ],
    )
    if summary:
        start = (summary.get("run") or {}).get("started_at") or 0.0
        marks = []
        for inc in incidents:
            data = read_json(inc / "incident.json")
            try:
                at = dt.datetime.fromisoformat(str(data.get("detected_at"))).timestamp() - float(
                    start
                )
                marks.append((at, f"#{inc.name} {data.get('kind')}"))
            except (TypeError, ValueError):
                pass
        doc.sections.append(_load_section(run_path, summary, marks=marks))
    rel = [str(p.relative_to(run_path)) for p in incidents]
    doc.sections.append(
        Section(
            "Incidents",
            [] if rel else ["No incident."],
            [incident_rows(run_path, rel)] if rel else [],
        )
    )
    return doc

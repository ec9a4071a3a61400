"""The report page of a compare campaign: cells, tested differences, charts, SLO search."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.records import iter_jsonl
from harness.report import charts
from harness.report.aggregate import RecordStats, finished_at
from harness.report.compare import LATENCIES, CellData
from harness.report.data import load_cells
from harness.report.document import Chart, Document, Section, Table
from harness.report.format import (
    common_facts,
    est_tuple,
    f_est,
    f_ms,
    f_num,
    incident_rows,
)
from harness.report.stats import Slo, auto_window_s


def build_compare(run_path: Path, campaign: dict[str, Any], summary: dict[str, Any]) -> Document:
    options = campaign.get("options", {})
    load = options.get("load", {})
    slo = Slo(load.get("slo_ttft_ms"), load.get("slo_tpot_ms"), load.get("slo_e2e_ms"))
    cells = load_cells(
        run_path,
        options.get("cells", []),
        t0=float(campaign.get("created_at", 0.0)),
        slo=slo,
    )
    block = summary.get("compare", {})
    by_key = {c["key"]: c for c in block.get("cells", [])}
    comparisons = block.get("comparisons", [])
    labels = ", ".join(c.label for c in cells)
    mode = (
        f"rate {load.get('rate')}/s"
        if load.get("rate")
        else f"concurrency {load.get('concurrency')}"
    )
    amount = (
        f"{load.get('requests')} requests"
        if load.get("requests")
        else f"{load.get('duration_s')} s"
    )
    doc = Document(
        title=f"compare {campaign.get('id', run_path.name)}: {labels}",
        verdict=_compare_verdict(comparisons, block.get("cells", [])),
        bad=any(c.get("hangs") for c in block.get("cells", [])),
        facts=[
            ("model", str(options.get("model"))),
            ("runtime", str(options.get("runtime"))),
            ("cells", labels),
            ("repeats", str(options.get("repeats"))),
            (
                "load",
                f"workload {load.get('workload')}, seed {load.get('seed')}, {mode}, "
                f"{amount} per cell and repeat",
            ),
            *common_facts(campaign),
        ],
    )
    table = Table(
        [
            "cell",
            "out tok/s",
            "req/s",
            "TTFT p50/p99 ms",
            "TPOT p50/p99 ms",
            "ITL p50/p99 ms",
            "E2E p50/p99 ms",
            "error rate [95% CI]",
            "stall rate",
            "hangs / repeats",
            "startup s (p50)",
        ],
        [],
    )
    for cell in cells:
        c = by_key.get(cell.key)
        if c is None:
            continue
        lat = c["latency_ms"]
        table.rows.append(
            [
                cell.label,
                f_num(c["throughput"]["output_tokens_per_s"]["mean"], 4),
                f_num(c["throughput"]["requests_per_s"]["mean"], 4),
                *(f"{f_ms(lat[m]['p50'])} / {f_ms(lat[m]['p99'])}" for m in LATENCIES),
                f_est(c["error_rate"]),
                f_est(c["stall_rate"]),
                f"{c['hangs']} / {c['repeats']}  ({f_est(c['hang_rate'], 2)})",
                f_num(c["startup_s"]["p50"]),
            ]
        )
    if any(c.get("goodput") for c in by_key.values()):
        table.headers.append("goodput req/s")
        for row, cell in zip(table.rows, cells, strict=False):
            g = (by_key.get(cell.key) or {}).get("goodput") or {}
            row.append(f"{f_num(g.get('requests_per_s'))} ({f_num(g.get('fraction'))})")
    doc.sections.append(
        Section(
            "Cells",
            [
                "Throughput is the mean over repeats; latencies pool every request of every "
                "repeat; rates carry 95% Wilson intervals."
            ],
            [table],
        )
    )
    for comparison in comparisons:
        doc.sections.append(_comparison_section(comparison))
    doc.sections.append(_compare_charts(run_path, cells, by_key))
    slo_search = summary.get("slo_search") or {}
    if slo_search:
        doc.sections.append(_slo_section(cells, slo_search))
    incidents = [inc for cell in cells for rep in cell.repeats for inc in rep.get("incidents", [])]
    overhead = _overhead_table(cells)
    doc.sections.append(
        Section(
            "Incidents and runs",
            [] if incidents else ["No incident in any cell."],
            [t for t in (incident_rows(run_path, incidents) if incidents else None, overhead) if t],
        )
    )
    return doc


def _compare_verdict(
    comparisons: Sequence[Mapping[str, Any]], cells: Sequence[Mapping[str, Any]]
) -> str:
    hung = [c["label"] for c in cells if c.get("hangs")]
    parts = []
    if hung:
        parts.append(f"hangs in {', '.join(hung)}")
    for comp in comparisons:
        sig = [d for d in comp["differences"] if d["verdict"] == "significant"]
        if not sig:
            parts.append(f"{comp['label']}: no significant difference")
            continue
        items = []
        for d in sig[:4]:
            if d["effect_kind"] == "ratio" and d["effect"] is not None:
                items.append(f"{d['metric']} x{d['effect']:.2f}")
            elif d["effect"] is not None:
                items.append(f"{d['metric']} {d['effect']:+.3f}")
        parts.append(f"{comp['label']}: " + ", ".join(items))
    return "; ".join(parts) or "no cells ran"


def _comparison_section(comparison: Mapping[str, Any]) -> Section:
    table = Table(
        [
            "metric",
            "baseline",
            "this cell",
            "effect",
            "Cliff's delta",
            "test",
            "p (adjusted)",
            "verdict",
        ],
        [],
    )
    for d in comparison["differences"]:
        effect = d["effect"]
        if effect is None:
            eff = "-"
        elif d["effect_kind"] == "ratio":
            eff = f"x{effect:.3f}"
        else:
            eff = f"{effect:+.4f}"
        table.rows.append(
            [
                d["metric"],
                f_num(d["baseline"], 4),
                f_num(d["other"], 4),
                eff,
                f_num(d["cliffs_delta"], 2)
                + (f" ({d['magnitude']})" if d.get("magnitude") else ""),
                d["test"],
                f_num(d["p_adjusted"], 2),
                d["verdict"] if d["verdict"] != "n/a" else (d.get("note") or "n/a"),
            ]
        )
    return Section(
        comparison["label"],
        [
            "Latencies: medians, Mann-Whitney U on every request; throughput and startup: means "
            "over repeats, Welch's t (needs 2+ repeats); rates: Fisher's exact test. p-values are "
            "adjusted for the false discovery rate over the whole campaign; significant means "
            "adjusted p < 0.05. Cliff's delta: |d| < 0.15 negligible, < 0.33 small, < 0.47 "
            "medium, else large."
        ],
        [table],
    )


def _compare_charts(
    run_path: Path, cells: Sequence[CellData], by_key: Mapping[str, Any]
) -> Section:
    section = Section("Charts")
    for name, title in (
        ("ttft", "Time to first token"),
        ("tpot", "Time per output token"),
        ("itl", "Inter-token latency"),
        ("e2e", "End-to-end latency"),
    ):
        series = {c.label: (c.stats.samples or {}).get(name, []) for c in cells}
        if any(series.values()):
            section.charts.append(
                Chart(f"{title} CDF", charts.cdf(series, title=f"{title} (CDF)", xlabel="ms"))
            )
    tok: dict[str, list[tuple[float, float | None]]] = {}
    ttft: dict[str, list[tuple[float, float | None]]] = {}
    for c in cells:
        if not c.repeats:
            continue
        windows = _windows(run_path / str(c.repeats[0]["run_dir"]) / "requests.jsonl")
        tok[c.label] = [(w["start_s"], w.get("output_tokens_per_s")) for w in windows]
        ttft[c.label] = [(w["start_s"], (w.get("ttft_ms") or {}).get("p50")) for w in windows]
    if tok:
        section.charts.append(
            Chart(
                "Throughput over time",
                charts.timeline(
                    tok,
                    title="Output tokens/s over time (first repeat of each cell)",
                    ylabel="tokens/s",
                ),
            )
        )
        section.charts.append(
            Chart(
                "TTFT over time",
                charts.timeline(
                    ttft, title="TTFT p50 over time (first repeat of each cell)", ylabel="ms"
                ),
            )
        )
    labels = [c.label for c in cells if c.key in by_key]
    section.charts.append(
        Chart(
            "Hang rate",
            charts.intervals(
                labels,
                [est_tuple(by_key[c.key]["hang_rate"]) for c in cells if c.key in by_key],
                title="Hangs per repeat (95% Wilson interval)",
                ylabel="hang rate",
            ),
        )
    )
    section.charts.append(
        Chart(
            "Error and stall rates",
            charts.intervals(
                [f"{lbl} {kind}" for lbl in labels for kind in ("failed", "stalled")],
                [
                    est_tuple(by_key[c.key][k])
                    for c in cells
                    if c.key in by_key
                    for k in ("error_rate", "stall_rate")
                ],
                title="Failed and stalled requests (95% Wilson interval)",
                ylabel="fraction of requests",
            ),
        )
    )
    section.charts.append(
        Chart(
            "Startup time",
            charts.strips(
                {c.label: c.ready_s() for c in cells},
                title="Time to healthy per start",
                ylabel="seconds",
            ),
        )
    )
    return section


def _windows(records_path: Path) -> list[dict[str, Any]]:
    """Time windows of one run's records, about 20 to 60 of them over its span."""
    first: float | None = None
    last: float | None = None
    for rec in iter_jsonl(records_path):
        sent = rec.get("sent_at")
        end = finished_at(rec)
        if isinstance(sent, int | float):
            first = sent if first is None else min(first, sent)
        if end is not None:
            last = end if last is None else max(last, end)
    if first is None or last is None:
        return []
    stats = RecordStats(first, window_s=auto_window_s(last - first))
    stats.extend(iter_jsonl(records_path))
    windows: list[dict[str, Any]] = stats.summary()["windows"]
    return windows


def _slo_section(cells: Sequence[CellData], search: Mapping[str, Any]) -> Section:
    table = Table(["cell", "highest rate within SLO (req/s)", "lowest failing", "probes"], [])
    criteria: list[str] = []
    for c in cells:
        s = search.get(c.key)
        if not s:
            continue
        criteria = s.get("criteria", criteria)
        best = s.get("max_rate")
        failing = s.get("lowest_failing_rate")
        best_text = "none (even the lowest rate failed)" if best is None else f_num(best, 4)
        if best is not None and failing is None:
            best_text = f">= {f_num(best, 4)} (no failing rate found)"
        probes = "; ".join(
            f"{p['rate']:g}: {'pass' if p['passed'] else 'fail (' + ', '.join(p['reasons']) + ')'}"
            for p in s.get("probes", [])
        )
        table.rows.append([c.label, best_text, f_num(failing, 4), probes])
    return Section(
        "Highest rate under the SLO",
        [
            f"Criteria: {', '.join(criteria)}; a probe also fails if a request stalled, over "
            "1% failed, or the achieved rate fell below 90% of the requested rate."
        ],
        [table],
    )


def _overhead_table(cells: Sequence[CellData]) -> Table:
    table = Table(
        [
            "cell",
            "repeat",
            "startup",
            "ready s",
            "healthy -> first request s",
            "last request -> stopped s",
            "run",
        ],
        [],
    )
    for c in cells:
        for rep in c.repeats:
            o = rep.get("overhead") or {}
            row = len(table.rows)
            table.rows.append(
                [
                    c.label,
                    str(rep.get("repeat")),
                    str(rep.get("startup")),
                    f_num(rep.get("ready_s")),
                    f_num(o.get("healthy_to_first_request_s")),
                    f_num(o.get("last_request_to_stopped_s")),
                    str(rep.get("run_dir")),
                ]
            )
            table.links[(row, 6)] = f"{rep.get('run_dir')}/server.log"
    table.title = (
        "Every cell-repeat (harness overhead: healthy to first request, last request to stopped)"
    )
    return table

"""``harness report``: turn a run or campaign directory into ``report.html`` and ``report.md``.

Works on what the run recorded (``campaign.json``, ``summary.json``, ``starts.jsonl``,
``cells.jsonl``, ``requests.jsonl``, incidents), so a report can be rendered again at any time,
including for a campaign that was interrupted. One builder per kind: compare, repro-startup,
soak, and a plain run (``harness load`` or ``harness serve`` with its incidents).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness import __version__
from harness.records import iter_jsonl, read_json
from harness.report import charts
from harness.report.aggregate import RecordStats, finished_at
from harness.report.compare import LATENCIES, CellData
from harness.report.data import load_cells
from harness.report.document import Chart, Document, Section, Table, render_html, render_markdown
from harness.report.stats import Slo, auto_window_s

Builder = Callable[[Path, dict[str, Any], dict[str, Any]], Document]


def write_report(run_path: Path) -> tuple[Path, Path]:
    """Render ``report.html`` and ``report.md`` into ``run_path``; returns both paths."""
    campaign = read_json(run_path / "campaign.json")
    summary = read_json(run_path / "summary.json")
    kind = str(campaign.get("kind") or summary.get("kind") or "run")
    builder: Builder = _BUILDERS.get(kind, build_run)
    doc = builder(run_path, campaign, summary)
    doc.footer = (
        f"harness {__version__} · rendered {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC} "
        f"from {run_path}"
    )
    html_path, md_path = run_path / "report.html", run_path / "report.md"
    _write(html_path, render_html(doc))
    _write(md_path, render_markdown(doc))
    return html_path, md_path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Formatting


def f_num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.{digits}g}"


def f_ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def f_est(est: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``0.2 [0.095, 0.37]``."""
    if not est or est.get("value") is None:
        return "-"
    lo, hi = est.get("ci95") or [None, None]
    return f"{f_num(est['value'], digits)} [{f_num(lo, digits)}, {f_num(hi, digits)}]"


def f_time(unix: Any) -> str:
    if not isinstance(unix, int | float):
        return "-"
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _engine_tp(options: Mapping[str, Any]) -> str:
    return f"{options.get('engine')} tp={options.get('tp')}"


def _engine_tp_profiles(options: Mapping[str, Any]) -> str:
    profiles = ",".join(options.get("profiles", []))
    return f"{options.get('engine')} / {options.get('tp')} / {profiles}"


def _est_tuple(est: Mapping[str, Any] | None) -> tuple[float | None, float | None, float | None]:
    if not est or est.get("value") is None:
        return None, None, None
    lo, hi = est.get("ci95") or [None, None]
    return est["value"], lo, hi


def _common_facts(campaign: Mapping[str, Any]) -> list[tuple[str, str]]:
    facts = []
    if campaign.get("command"):
        facts.append(("command", " ".join(str(c) for c in campaign["command"])))
    facts.append(("started", f_time(campaign.get("created_at"))))
    if campaign.get("ended_at"):
        facts.append(("ended", f_time(campaign.get("ended_at"))))
    facts.append(("status", str(campaign.get("status", "?"))))
    return facts


def _incident_rows(run_path: Path, paths: Sequence[str]) -> Table:
    """One row per incident: where, what, when, the odd one out; linked to its summary.md."""
    table = Table(["incident", "kind", "detected", "odd one out / where"], [])
    for rel in paths:
        data = read_json(run_path / rel / "incident.json")
        row = len(table.rows)
        odd = data.get("odd_one_out")
        where = str(data.get("where") or "")
        odd_text = odd.get("label", str(odd)) if isinstance(odd, dict) else (odd or "")
        table.rows.append(
            [
                rel,
                str(data.get("kind", "?")),
                str(data.get("detected_at", "?"))[:19].replace("T", " "),
                f"{odd_text}; {where}".strip("; ") or "-",
            ]
        )
        table.links[(row, 0)] = f"{rel}/summary.md"
    return table


# ---------------------------------------------------------------------------------------------
# compare


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
            *_common_facts(campaign),
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
            [
                t
                for t in (_incident_rows(run_path, incidents) if incidents else None, overhead)
                if t
            ],
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
                [_est_tuple(by_key[c.key]["hang_rate"]) for c in cells if c.key in by_key],
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
                    _est_tuple(by_key[c.key][k])
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


# ---------------------------------------------------------------------------------------------
# repro-startup


def build_repro(run_path: Path, campaign: dict[str, Any], summary: dict[str, Any]) -> Document:
    options = campaign.get("options", {})
    s = summary.get("startup", {})
    starts = list(iter_jsonl(run_path / "starts.jsonl"))
    rate = f_est({"value": s.get("rate"), "ci95": s.get("ci95")})
    verdict = (
        f"{s.get('hangs', 0)} startup hang(s) and {s.get('crashes', 0)} crash(es) in "
        f"{s.get('runs', 0)} starts: hang rate {rate} (95% Wilson interval)"
    )
    doc = Document(
        title=f"repro-startup {campaign.get('id', run_path.name)}: {_engine_tp(options)}",
        verdict=verdict,
        bad=bool(s.get("hangs") or s.get("crashes")),
        facts=[
            ("model", str(options.get("model"))),
            (
                "engine / TP / profiles",
                _engine_tp_profiles(options),
            ),
            ("runtime", str(options.get("runtime"))),
            (
                "starts asked",
                f"{options.get('runs')}"
                + (" (until the first hang)" if options.get("until_hang") else ""),
            ),
            ("startup deadline", f"{options.get('startup_timeout_s')} s"),
            *_common_facts(campaign),
        ],
    )
    ready = s.get("ready_s", {})
    rates = Table(
        ["", "value [95% CI]"],
        [
            ["hang rate", rate],
            ["crash rate", f_est(s.get("crash_rate"))],
            [
                "time to healthy p50 / p90 / max (s)",
                " / ".join(f_num(ready.get(k)) for k in ("p50", "p90", "max")),
            ],
        ],
    )
    phases = Table(["phase", "reached in starts", "p50 s", "p90 s", "max s"], [])
    for name, d in (s.get("phases") or {}).items():
        phases.rows.append([name, str(d["n"]), f_num(d["p50"]), f_num(d["p90"]), f_num(d["max"])])
    stuck = Table(
        ["hung after phase", "starts"],
        [[k, str(v)] for k, v in (s.get("hangs_after_phase") or {}).items()],
    )
    section = Section("Startup", [], [rates, phases] + ([stuck] if stuck.rows else []))
    section.charts.append(
        Chart(
            "Hang and crash rates",
            charts.intervals(
                ["hang", "crash"],
                [
                    _est_tuple({"value": s.get("rate"), "ci95": s.get("ci95")}),
                    _est_tuple(s.get("crash_rate")),
                ],
                title="Startup hang and crash rates (95% Wilson interval)",
                ylabel="per start",
            ),
        )
    )
    groups: dict[str, list[float]] = {}
    for start in starts:
        for name, at in (start.get("phases") or {}).items():
            groups.setdefault(name, []).append(float(at))
    groups["healthy"] = [float(x["ready_s"]) for x in starts if x.get("ready_s") is not None]
    section.charts.append(
        Chart(
            "Startup phases",
            charts.strips(
                groups,
                title="When each startup phase was reached (every start)",
                ylabel="seconds after launch",
            ),
        )
    )
    section.charts.append(
        Chart(
            "Time to healthy per start",
            charts.timeline(
                {"time to healthy": [(float(x["n"]), x.get("ready_s")) for x in starts]},
                title="Time to healthy, start by start (hangs marked)",
                ylabel="seconds",
                xlabel="start",
                marks=[(float(x["n"]), x["outcome"]) for x in starts if x["outcome"] != "healthy"],
            ),
        )
    )
    doc.sections.append(section)
    table = Table(["start", "outcome", "ready s", "last phase", "detail", "incident"], [])
    for x in starts:
        row = len(table.rows)
        table.rows.append(
            [
                str(x["n"]),
                x["outcome"],
                f_num(x.get("ready_s")),
                str(x.get("last_phase") or "-"),
                str(x.get("detail") or ""),
                str(x.get("incident") or "-"),
            ]
        )
        table.links[(row, 0)] = f"{x['run_dir']}/server.log"
        if x.get("incident"):
            table.links[(row, 5)] = f"{x['incident']}/summary.md"
    doc.sections.append(Section("Every start", [], [table]))
    return doc


# ---------------------------------------------------------------------------------------------
# soak


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
        title=f"soak {campaign.get('id', run_path.name)}: {_engine_tp(options)}",
        verdict=verdict,
        bad=bool(soak.get("incidents")),
        facts=[
            ("model", str(options.get("model"))),
            (
                "engine / TP / profiles",
                _engine_tp_profiles(options),
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
            *_common_facts(campaign),
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
            [_incident_rows(run_path, [f"incidents/{m['incident']}" for m in marks])]
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


# ---------------------------------------------------------------------------------------------
# a plain run (harness load / harness serve)


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
            [_incident_rows(run_path, rel)] if rel else [],
        )
    )
    return doc


_BUILDERS: dict[str, Builder] = {
    "compare": build_compare,
    "repro-startup": build_repro,
    "soak": build_soak,
}

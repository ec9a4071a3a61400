"""The report page of a repro-startup campaign: hang rate, phases, every start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.records import iter_jsonl
from harness.report import charts
from harness.report.document import Chart, Document, Section, Table
from harness.report.format import (
    common_facts,
    engine_tp,
    engine_tp_profiles,
    est_tuple,
    f_est,
    f_num,
)


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
        title=f"repro-startup {campaign.get('id', run_path.name)}: {engine_tp(options)}",
        verdict=verdict,
        bad=bool(s.get("hangs") or s.get("crashes")),
        facts=[
            ("model", str(options.get("model"))),
            (
                "engine / TP / profiles",
                engine_tp_profiles(options),
            ),
            ("runtime", str(options.get("runtime"))),
            (
                "starts asked",
                f"{options.get('runs')}"
                + (" (until the first hang)" if options.get("until_hang") else ""),
            ),
            ("startup deadline", f"{options.get('startup_timeout_s')} s"),
            *common_facts(campaign),
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
                    est_tuple({"value": s.get("rate"), "ci95": s.get("ci95")}),
                    est_tuple(s.get("crash_rate")),
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

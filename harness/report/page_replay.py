"""The report page of a replay: how often the hang came back, each attempt, the new incidents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.records import iter_jsonl
from harness.report import charts
from harness.report.document import Chart, Document, Section, Table
from harness.report.format import common_facts, f_est, f_num, incident_rows


def build_replay(run_path: Path, campaign: dict[str, Any], summary: dict[str, Any]) -> Document:
    options = campaign.get("options", {})
    r = summary.get("replay", {})
    src = r.get("source", {})
    attempts = list(iter_jsonl(run_path / "attempts.jsonl"))
    est = {"value": r.get("rate"), "ci95": r.get("ci95")}
    rate = f_est(est)
    verdict = (
        f"the hang came back in {r.get('reproduced', 0)} of {r.get('attempts', 0)} attempt(s): "
        f"rate {rate} (95% Wilson interval)"
    )
    target = {"fresh": "a fresh server per hang", "run": f"run {options.get('run')}"}.get(
        str(options.get("target")), str(options.get("url"))
    )
    source = str(src.get("incident", options.get("incident", "?")))
    doc = Document(
        title=f"replay {campaign.get('id', run_path.name)} of {Path(source).name}",
        verdict=verdict,
        bad=bool(r.get("reproduced")),
        facts=[
            ("incident replayed", source),
            ("its kind", str(src.get("kind", "?"))),
            ("its likely cause", str(src.get("likely") or "-")),
            ("requests", f"{src.get('requests', '?')} over {f_num(src.get('span_s'))} s"),
            ("against", target),
            ("attempts asked", str(options.get("times"))),
            *common_facts(campaign),
        ],
    )
    rates = Table(
        ["", "value"],
        [
            ["reproduction rate [95% CI]", rate],
            ["attempts that ran", str(r.get("attempts", 0))],
            ["reproduced", str(r.get("reproduced", 0))],
            ["with the same signature", str(r.get("same_signature", 0))],
            ["servers that did not start", str(r.get("no_start", 0))],
        ],
    )
    section = Section("Reproduction", [], [rates])
    section.charts.append(
        Chart(
            "Reproduction rate",
            charts.intervals(
                ["reproduced"],
                [(est["value"], *(est["ci95"] or [None, None]))],
                title="How often the hang came back (95% Wilson interval)",
                ylabel="per attempt",
            ),
        )
    )
    doc.sections.append(section)
    table = Table(["attempt", "outcome", "ok / stalled / sent", "likely", "incident"], [])
    for a in attempts:
        row = len(table.rows)
        table.rows.append(
            [
                str(a.get("n")),
                str(a.get("outcome")),
                f"{a.get('ok', 0)} / {a.get('stalled', 0)} / {a.get('sent', 0)}",
                str(a.get("likely") or a.get("detail") or "-"),
                str(a.get("incident") or "-"),
            ]
        )
        if a.get("incident"):
            table.links[(row, 4)] = f"{a['incident']}/summary.md"
    doc.sections.append(Section("Every attempt", [], [table]))
    incidents = [str(p) for p in r.get("incidents", []) if (run_path / str(p)).is_dir()]
    if incidents:
        doc.sections.append(Section("New incidents", [], [incident_rows(run_path, incidents)]))
    return doc

"""Formatting and pieces every report page shares (numbers, intervals, facts, incidents)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.records import read_json
from harness.report.document import Table


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


def engine_tp(options: Mapping[str, Any]) -> str:
    return f"{options.get('engine')} tp={options.get('tp')}"


def engine_tp_profiles(options: Mapping[str, Any]) -> str:
    profiles = ",".join(options.get("profiles", []))
    return f"{options.get('engine')} / {options.get('tp')} / {profiles}"


def est_tuple(est: Mapping[str, Any] | None) -> tuple[float | None, float | None, float | None]:
    if not est or est.get("value") is None:
        return None, None, None
    lo, hi = est.get("ci95") or [None, None]
    return est["value"], lo, hi


def common_facts(campaign: Mapping[str, Any]) -> list[tuple[str, str]]:
    facts = []
    if campaign.get("command"):
        facts.append(("command", " ".join(str(c) for c in campaign["command"])))
    facts.append(("started", f_time(campaign.get("created_at"))))
    if campaign.get("ended_at"):
        facts.append(("ended", f_time(campaign.get("ended_at"))))
    facts.append(("status", str(campaign.get("status", "?"))))
    return facts


def incident_rows(run_path: Path, paths: Sequence[str]) -> Table:
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

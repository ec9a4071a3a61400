"""Reading a run or campaign directory back for summaries and reports (read-only I/O).

Records are written once by the run (requests.jsonl, cells.jsonl, starts.jsonl, summary.json)
and read here as many times as reports are rendered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.records import iter_jsonl
from harness.report.aggregate import RecordStats
from harness.report.compare import CellData
from harness.report.stats import Slo, auto_window_s

CELLS_FILE = "cells.jsonl"


def load_cells(
    campaign_dir: Path, cells: Sequence[Mapping[str, Any]], *, t0: float, slo: Slo
) -> list[CellData]:
    """Every cell's repeats (``cells.jsonl``) with its records streamed into statistics that
    keep per-request samples. ``cells``: the campaign's cells as recorded in campaign.json
    (``key``, ``label``, ``engine``, ``tp``, ``profiles``)."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for line in iter_jsonl(campaign_dir / CELLS_FILE):
        by_cell.setdefault(str(line.get("cell")), []).append(line)
    out = []
    for cell in cells:
        key = str(cell["key"])
        repeats = by_cell.get(key, [])
        stats = RecordStats(t0, window_s=auto_window_s(None), slo=slo, keep_samples=True)
        for rep in repeats:
            stats.extend(iter_jsonl(campaign_dir / str(rep["run_dir"]) / "requests.jsonl"))
        out.append(
            CellData(
                key,
                str(cell.get("label", key)),
                str(cell.get("engine", "?")),
                int(cell.get("tp", 0)),
                list(cell.get("profiles", [])),
                stats,
                repeats,
            )
        )
    return out

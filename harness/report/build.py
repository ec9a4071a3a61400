"""``harness report``: turn a run or campaign directory into ``report.html`` and ``report.md``.

Works on what the run recorded (``campaign.json``, ``summary.json``, ``starts.jsonl``,
``cells.jsonl``, ``requests.jsonl``, incidents), so a report can be rendered again at any time,
including for a campaign that was interrupted. One builder per kind: compare, repro-startup,
soak, replay, and a plain run (``harness load`` or ``harness serve`` with its incidents).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import __version__
from harness.records import read_json
from harness.report.document import Document, render_html, render_markdown
from harness.report.page_compare import build_compare
from harness.report.page_load import build_run, build_soak
from harness.report.page_replay import build_replay
from harness.report.page_startup import build_repro

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


_BUILDERS: dict[str, Builder] = {
    "compare": build_compare,
    "repro-startup": build_repro,
    "soak": build_soak,
    "replay": build_replay,
}

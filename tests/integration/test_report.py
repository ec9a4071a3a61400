"""``harness report`` on a plain load run: report.html renders offline in headless Chromium;
bad input is one line, exit 2."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import require
from tests.integration.chromium import chromium, open_in_chromium
from tests.integration.harnesscli import only_dir, run
from tests.integration.servers import sim_server


def test_report_of_a_load_run(campaign_runs: Path, tmp_path: Path) -> None:
    with sim_server() as (url, _):
        load = run(campaign_runs, "load", "--url", url, "-c", "4", "-n", "40", "--no-progress")
    assert load.returncode == 0, load.stderr
    run_dir = only_dir(campaign_runs)
    res = run(campaign_runs, "report", run_dir.name, timeout=120)
    assert res.returncode == 0, res.stderr
    html = run_dir / "report.html"
    md = (run_dir / "report.md").read_text()
    assert "| 40 | 0 | 0 | 0 |" in md  # completed, failed, stalled, aborted
    require(chromium() is not None, "Debian's chromium (headless report check)")
    dom = open_in_chromium(html, tmp_path / "chromium")
    charts = html.read_text().count('data-chart="')
    assert charts >= 3
    assert re.search(rf'data-charts-rendered="{charts}"', dom)


def test_report_bad_input(campaign_runs: Path) -> None:
    missing = run(campaign_runs, "report", "no-such-run", timeout=60)
    assert missing.returncode == 2 and "no run 'no-such-run'" in missing.stderr
    empty = campaign_runs / "empty-run"
    empty.mkdir()
    res = run(campaign_runs, "report", "empty-run", timeout=60)
    assert res.returncode == 2 and "nothing to report" in res.stderr
    assert "Traceback" not in res.stderr

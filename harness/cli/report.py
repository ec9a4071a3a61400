"""``harness report``: render report.html and report.md of runs and campaigns."""

from __future__ import annotations

import click

from harness.cli.display import make_console
from harness.cli.options import runs_dir_option
from harness.errors import BadInput
from harness.rundir import open_run, runs_root


@click.command("report")
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN_ID...")
@runs_dir_option
def report(run_ids: tuple[str, ...], runs_dir: str | None) -> None:
    """Write report.html (one self-contained file: opens offline, charts embedded) and
    report.md into each run's directory, from what the run recorded.

    Works on campaigns (compare, repro-startup, soak: written automatically at their end, also
    when interrupted) and on plain runs of `harness load` or `harness serve`. A RUN_ID may also
    be the path of a run directory.

    \b
    Examples:
      harness report 20261201-101500-compare-3fa9
      harness report runs/20261201-101500-soak-vllm-tp2-3fa9 runs/20261201-120000-load-1a2b
    """
    from harness.report.build import write_report

    console = make_console(stderr=False)
    root = runs_root(runs_dir)
    runs = [open_run(root, run_id) for run_id in run_ids]
    for run in runs:
        if not (run.summary.exists() or (run.path / "campaign.json").exists()):
            raise BadInput(
                f"run {run.run_id} has nothing to report yet (no summary.json)",
                hint="a report needs a finished load or campaign: harness load --run RUN_ID ...",
            )
    for run in runs:
        html, md = write_report(run.path)
        console.print(f"{run.run_id}: {html} and {md}")

"""``harness campaign-task``: one step of a campaign, run by a SLURM array task."""

from __future__ import annotations

from pathlib import Path

import click

from harness.cli.display import make_console


@click.command("campaign-task", hidden=True)
@click.argument("campaign_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--index", type=click.IntRange(min=1), required=True, help="The array task's index.")
def campaign_task(campaign_dir: Path, index: int) -> None:
    """Run step INDEX of the campaign in CAMPAIGN_DIR (what `--slurm` submits: start INDEX of a
    repro-startup, cell-repeat INDEX of a compare) and write its record.json."""
    from harness.campaign.base import read_campaign
    from harness.cli.campaignopts import planner_from_record
    from harness.errors import BadInput
    from harness.rundir import RunDir

    run = RunDir(campaign_dir.resolve())
    record = read_campaign(run)
    options = record.get("options", {})
    if "plan_options" not in options:
        raise BadInput(f"{campaign_dir} is not a campaign submitted with --slurm")
    planner = planner_from_record(options)
    console = make_console()
    if record.get("kind") == "repro-startup":
        from harness.campaign.repro import print_start, repro_task

        print_start(console, repro_task(run, planner, index), int(options["runs"]), run)
    elif record.get("kind") == "compare":
        from harness.campaign.compare import compare_task

        compare_task(run, planner, index, console=console)
    else:
        raise BadInput(f"{campaign_dir} holds a {record.get('kind')} campaign: no array tasks")

"""The pure parts of the SLURM fan-out: the batch script and SLURM's job state."""

from __future__ import annotations

from pathlib import Path

from harness.campaign.compare import matrix, task_cell
from harness.campaign.slurm import SlurmOptions, parse_job_state, sbatch_script


def test_the_batch_script_runs_one_campaign_step_per_array_task() -> None:
    script = sbatch_script(
        campaign_dir=Path("/runs/c1"),
        tasks=12,
        options=SlurmOptions(partition="gpu", time_limit="30:00", cpus_per_task=4),
        job_name="harness-c1",
        python="/opt/venv/bin/python",
    )
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --array=1-12" in lines
    assert "#SBATCH --partition=gpu" in lines
    assert "#SBATCH --time=30:00" in lines
    assert "#SBATCH --cpus-per-task=4" in lines
    assert "#SBATCH --output=/runs/c1/slurm/%a.out" in lines
    assert lines[-1] == (
        'exec /opt/venv/bin/python -m harness campaign-task /runs/c1 --index "$SLURM_ARRAY_TASK_ID"'
    )
    plain = sbatch_script(campaign_dir=Path("/r"), tasks=1, options=SlurmOptions(), job_name="j")
    assert "--partition" not in plain and "--time" not in plain


def test_slurm_states_as_scontrol_prints_them() -> None:
    cancelled = (
        "JobId=42 ArrayJobId=40 ArrayTaskId=2 JobName=harness-x UserId=root(0) "
        "JobState=CANCELLED Reason=None Dependency=(null) ExitCode=0:15 RunTime=00:00:07"
    )
    assert parse_job_state(cancelled) == ("CANCELLED", "0:15")
    timeout = "JobId=7 JobState=TIMEOUT Reason=TimeLimit ExitCode=0:0"
    assert parse_job_state(timeout) == ("TIMEOUT", "0:0 (TimeLimit)")
    assert parse_job_state("garbage") == ("UNKNOWN", None)


def test_array_tasks_map_to_cells_in_the_local_order() -> None:
    cells = matrix(["vllm"], [1, 2], [()])
    order = [(c.label, r) for c, r in (task_cell(cells, n) for n in range(1, 7))]
    assert order == [("tp1", 1), ("tp2", 1), ("tp1", 2), ("tp2", 2), ("tp1", 3), ("tp2", 3)]

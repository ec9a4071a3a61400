"""Campaigns fanned out as a SLURM job array (I/O: sbatch, squeue, scontrol, scancel).

``harness repro-startup --slurm`` and ``harness compare --slurm`` submit one array task per start
or per cell-repeat. Each task runs ``harness campaign-task CAMPAIGN_DIR --index N``, which does
exactly what the local campaign does for that step and writes its record into the step's run
directory (``record.json``). The submitting harness follows the job (pending / running / done,
live), then gathers every record into the same ``starts.jsonl`` / ``cells.jsonl``,
``summary.json`` and report as a local run. A task that ended without a record (SLURM's time
limit, a node failure, ``scancel``) is recorded with SLURM's own state for it, never dropped.

Tasks of one array may run side by side on one node, so task ``n`` serves on port ``P + n - 1``.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import BadInput, EnvironmentProblem

if TYPE_CHECKING:
    from harness.campaign.base import Progress
    from harness.console import Console
    from harness.rundir import RunDir

RECORD = "record.json"
#: Array task states that mean "still to come".
_WAITING = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}
_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SlurmOptions:
    """``--slurm``, ``--partition``, ``--slurm-time``, ``--cpus-per-task``."""

    partition: str | None = None
    time_limit: str | None = None
    cpus_per_task: int = 1
    poll_s: float = 2.0


def require_slurm() -> None:
    """Exit 3 with the way out when SLURM's commands are not here."""
    missing = [c for c in ("sbatch", "squeue", "scontrol", "scancel") if shutil.which(c) is None]
    if missing:
        raise EnvironmentProblem(
            f"SLURM is not installed here ({', '.join(missing)} not on PATH)",
            hint="run the campaign without --slurm, or on a SLURM login node "
            "(a one-node test cluster: scripts/slurm.sh up)",
        )


def _run(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"{argv[0]} failed: {exc}") from None
    if out.returncode != 0:
        raise EnvironmentProblem(f"{' '.join(argv[:2])}: {(out.stderr or out.stdout).strip()}")
    return out.stdout


def sbatch_script(
    *,
    campaign_dir: Path,
    tasks: int,
    options: SlurmOptions,
    job_name: str,
    python: str = sys.executable,
) -> str:
    """The batch script of a campaign's array job (pure)."""
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --array=1-{tasks}",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={options.cpus_per_task}",
        f"#SBATCH --output={campaign_dir / 'slurm' / '%a.out'}",
    ]
    if options.partition:
        lines.append(f"#SBATCH --partition={options.partition}")
    if options.time_limit:
        lines.append(f"#SBATCH --time={options.time_limit}")
    lines += [
        "# One step of a harness campaign per array task (see harness campaign-task --help).",
        "exec "
        + shlex.join([python, "-m", "harness", "campaign-task", str(campaign_dir)])
        + ' --index "$SLURM_ARRAY_TASK_ID"',
        "",
    ]
    return "\n".join(lines)


def submit(campaign_dir: Path, script: str) -> str:
    """Write the script next to the campaign and submit it; returns the job id."""
    (campaign_dir / "slurm").mkdir(exist_ok=True)
    path = campaign_dir / "slurm" / "array.sbatch"
    path.write_text(script)
    job = _run(["sbatch", "--parsable", str(path)]).strip().split(";")[0]
    if not job.isdigit():
        raise EnvironmentProblem(f"sbatch answered {job!r}, not a job id")
    return job


def waiting_tasks(job: str) -> dict[int, str]:
    """Array task -> state, for the tasks SLURM still lists as pending or running."""
    out = _run(["squeue", "-h", "-r", "-j", job, "-o", "%K %T"])
    states: dict[int, str] = {}
    for line in out.splitlines():
        task, _, state = line.strip().partition(" ")
        if task.isdigit() and state in _WAITING:
            states[int(task)] = state
    return states


_STATE = re.compile(r"JobState=(\S+)")
_EXIT = re.compile(r"ExitCode=(\S+)")
_REASON = re.compile(r"Reason=(\S+)")


def parse_job_state(text: str) -> tuple[str, str | None]:
    """``(JobState, "ExitCode (Reason)")`` from ``scontrol show job -o`` output (pure)."""
    state = _STATE.search(text)
    code = _EXIT.search(text)
    reason = _REASON.search(text)
    detail = code.group(1) if code else None
    if reason and reason.group(1) != "None":
        detail = f"{detail or '?'} ({reason.group(1)})"
    return (state.group(1) if state else "UNKNOWN"), detail


def final_state(job: str, task: int) -> tuple[str, str | None]:
    """SLURM's final state of one array task (UNKNOWN once SLURM forgot the job)."""
    try:
        text = _run(["scontrol", "-o", "show", "job", f"{job}_{task}"])
    except EnvironmentProblem:
        return "UNKNOWN", "SLURM no longer lists the task (MinJobAge passed)"
    return parse_job_state(text)


def cancel(job: str) -> None:
    """Cancel the whole array (best effort: it may have ended already)."""
    subprocess.run(["scancel", job], capture_output=True, timeout=_TIMEOUT_S, check=False)


def follow(
    job: str,
    tasks: int,
    done: Callable[[int], bool],
    *,
    poll_s: float,
    on_progress: Callable[[int, int, int], None],
) -> None:
    """Wait until no task of ``job`` is pending or running; ``on_progress(pending, running,
    done)`` after every poll. Ctrl-C and SIGTERM reach the caller (which cancels the job)."""
    while True:
        waiting = waiting_tasks(job)
        finished = sum(1 for n in range(1, tasks + 1) if done(n))
        pending = sum(1 for s in waiting.values() if s == "PENDING")
        on_progress(pending, len(waiting) - pending, finished)
        if not waiting:
            return
        time.sleep(poll_s)


def lost_record(job: str, task: int) -> dict[str, str | int | None]:
    """What is known of a task that wrote no record: SLURM's state and exit code."""
    state, detail = final_state(job, task)
    return {"slurm_job": f"{job}_{task}", "outcome": f"slurm-{state.lower()}", "detail": detail}


def check_tasks(tasks: int) -> None:
    if tasks < 1:
        raise BadInput("a SLURM campaign needs at least one task")


def run_campaign_array(
    run: RunDir,
    tasks: int,
    record_path: Callable[[int], Path],
    options: SlurmOptions,
    *,
    console: Console,
    progress: Progress,
) -> tuple[list[dict[str, object]], str]:
    """:func:`run_array` for a campaign: its job id recorded in campaign.json and printed,
    SLURM's counts shown as the campaign's progress."""
    from harness.campaign.base import update_campaign

    def submitted(job: str) -> None:
        update_campaign(run, slurm_job=job)
        console.print(f"submitted SLURM job {job}: {tasks} array task(s)")

    def progressed(text: str, done: int) -> None:
        progress.phase, progress.step = text, done

    return run_array(
        run.path,
        tasks,
        record_path,
        options,
        job_name=f"harness-{run.run_id}",
        on_progress=progressed,
        on_submitted=submitted,
    )


def run_array(
    campaign_dir: Path,
    tasks: int,
    record_path: Callable[[int], Path],
    options: SlurmOptions,
    *,
    job_name: str,
    on_progress: Callable[[str, int], None],
    on_submitted: Callable[[str], None],
) -> tuple[list[dict[str, object]], str]:
    """Submit the array, follow it, gather one record per task (SLURM's state for a task that
    wrote none). Returns (records in task order, "done" or "interrupted"). Interrupted: the
    job is cancelled and what finished is gathered."""
    from harness.campaign.signals import Terminated, terminate_on_signals
    from harness.records import read_json

    require_slurm()
    check_tasks(tasks)
    job = submit(
        campaign_dir,
        sbatch_script(campaign_dir=campaign_dir, tasks=tasks, options=options, job_name=job_name),
    )
    on_submitted(job)
    status = "done"

    def progress(pending: int, running: int, done: int) -> None:
        on_progress(f"SLURM job {job}: {pending} pending, {running} running, {done} done", done)

    try:
        with terminate_on_signals():
            follow(
                job,
                tasks,
                lambda n: record_path(n).exists(),
                poll_s=options.poll_s,
                on_progress=progress,
            )
    except (KeyboardInterrupt, Terminated):
        status = "interrupted"
        cancel(job)
    records: list[dict[str, object]] = []
    for n in range(1, tasks + 1):
        record: dict[str, object] = dict(read_json(record_path(n)))
        if not record:
            record = {"task": n, **lost_record(job, n)}
        record["slurm_job"] = f"{job}_{n}"
        records.append(record)
    return records, status

"""``harness repro-startup``: N cold starts in a row to catch the start that never becomes healthy.

Each start is a full run directory ``starts/<n>/`` (plan, server.log, state). A start that misses
its deadline (or whose log goes silent, per the profile) is a *hang*, one that exits is a
*crash*; both are captured as an incident while the processes still exist, then the server is
stopped and the campaign goes on (``until_hang`` stops at the first hang and, when the plan says
``on_hang: keep``, leaves that server running for a human). Every start is appended to
``starts.jsonl`` as it ends, and ``summary.json`` is rewritten after each one, so an interrupted
campaign still has its numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.campaign.base import Planner, Progress, Slot, update_campaign
from harness.campaign.server import launch, startup_message
from harness.campaign.signals import Terminated, terminate_on_signals
from harness.campaign.slurm import RECORD, SlurmOptions, run_campaign_array
from harness.engines import get_adapter
from harness.records import append_jsonl, iter_jsonl, write_json, write_jsonl
from harness.report.startup import startup_summary
from harness.rundir import RunDir
from harness.runtime.base import ServerHandle
from harness.runtime.local import check_port_free

if TYPE_CHECKING:
    from harness.console import Console
    from harness.watchdog.capture import CaptureOptions

STARTS_FILE = "starts.jsonl"
_OUTCOME = {"healthy": "healthy", "exited": "crash", "timeout": "hang", "log-silence": "hang"}


@dataclass(frozen=True)
class ReproOptions:
    """``--runs N``, ``--until-hang``."""

    runs: int
    until_hang: bool = False


def one_start(
    run: RunDir,
    planner: Planner,
    n: int,
    *,
    keep_if_hung: bool = False,
    progress: Progress | None = None,
    live: list[ServerHandle] | None = None,
    capture_options: CaptureOptions | None = None,
    port_offset: int = 0,
) -> dict[str, Any]:
    """Start number ``n`` of the campaign in ``run``: plan, launch, capture a failed start,
    stop (unless ``keep_if_hung`` and the plan keeps hung servers). Returns its record (a line
    of ``starts.jsonl``); ``record["kept"]`` says the server was left running."""
    live = live if live is not None else []
    spec = planner(
        Slot(run_id=f"{n:03d}", runs_root=run.path / "starts", index=n, port_offset=port_offset)
    )
    # The previous start's server must have let go of the port.
    check_port_free(spec.host, spec.port)
    start_run = RunDir(Path(spec.run_dir)).create()
    start_run.write_launch_spec(spec)
    began = time.time()
    started = launch(
        spec,
        start_run,
        observer=progress,
        console=None,
        capture=True,
        capture_options=capture_options,
        on_started=live.append,
    )
    result = started.startup
    outcome = _OUTCOME[result.outcome]
    record: dict[str, Any] = {
        "n": n,
        "run_id": spec.run_id,
        "run_dir": str(start_run.path.relative_to(run.path)),
        "started_at": round(began, 3),
        "outcome": outcome,
        "ready_s": round(result.elapsed_s, 3) if result.healthy else None,
        "elapsed_s": round(result.elapsed_s, 3),
        "phases": {name: round(at, 3) for name, at in result.phases},
        "last_phase": result.phases[-1][0] if result.phases else None,
        "phase_order": [phase.name for phase in get_adapter(spec.engine).startup_phases],
        "detail": None if result.healthy else startup_message(spec, result),
        "exit_code": result.exit_code,
        "incident": str(started.incident.path.relative_to(run.path)) if started.incident else None,
    }
    if outcome == "hang" and keep_if_hung and spec.watch.on_hang == "keep":
        record["kept"] = True
    else:
        stop_began = time.monotonic()
        started.handle.stop()
        record["stop_s"] = round(time.monotonic() - stop_began, 3)
    live.clear()
    return record


def run_repro(
    run: RunDir,
    planner: Planner,
    options: ReproOptions,
    *,
    console: Console,
    progress: Progress,
    capture_options: CaptureOptions | None = None,
) -> dict[str, Any]:
    """Run the campaign in ``run`` (already started with ``campaign.json``); returns the
    summary also written to ``summary.json``. Ctrl-C / SIGTERM end it after stopping the
    server of the current start; the summary then covers the starts that finished."""
    starts_file = run.path / STARTS_FILE
    live: list[ServerHandle] = []
    status = "done"
    kept: str | None = None
    try:
        with terminate_on_signals():
            for n in range(1, options.runs + 1):
                progress.step, progress.label = n, f"start {n}/{options.runs}"
                record = one_start(
                    run,
                    planner,
                    n,
                    keep_if_hung=options.until_hang,
                    progress=progress,
                    live=live,
                    capture_options=capture_options,
                )
                append_jsonl(starts_file, record)
                if record.get("kept"):
                    kept = record["run_id"]
                if record["outcome"] != "healthy":
                    progress.incidents += 1
                    progress.hangs += record["outcome"] == "hang"
                print_start(console, record, options.runs, run)
                write_summary(run)
                if record["outcome"] == "hang" and options.until_hang:
                    break
    except (KeyboardInterrupt, Terminated):
        status = "interrupted"
        console.print("stopping ...")
    finally:
        for handle in live:
            handle.stop()
    summary = write_summary(run, status=status)
    if kept:
        summary["kept"] = kept
        console.print(
            f"the hung server is kept for inspection: harness dump {run.path / 'starts' / kept}; "
            f"harness down {run.path / 'starts' / kept}"
        )
    update_campaign(run, status=status, ended_at=time.time())
    return summary


def start_record_path(run: RunDir, n: int) -> Path:
    """Where a SLURM array task leaves the record of start ``n``."""
    return run.path / "starts" / f"{n:03d}" / RECORD


def repro_task(run: RunDir, planner: Planner, n: int) -> dict[str, Any]:
    """Start ``n`` as one SLURM array task: its own port (tasks may share a node), the record
    written where the submitting harness gathers it."""
    record = one_start(run, planner, n, port_offset=n - 1)
    write_json(start_record_path(run, n), record)
    return record


def run_repro_slurm(
    run: RunDir,
    options: ReproOptions,
    slurm: SlurmOptions,
    *,
    console: Console,
    progress: Progress,
) -> dict[str, Any]:
    """The campaign as a SLURM job array, one task per start; gathered into the same
    ``starts.jsonl``, summary and report as a local run."""

    records, status = run_campaign_array(
        run,
        options.runs,
        lambda n: start_record_path(run, n),
        slurm,
        console=console,
        progress=progress,
    )
    for n, record in enumerate(records, start=1):
        record.setdefault("n", n)
        record.setdefault("run_dir", f"starts/{n:03d}")
        print_start(console, record, options.runs, run)
    write_jsonl(run.path / STARTS_FILE, records)
    summary = write_summary(run, status=status)
    update_campaign(run, status=status, ended_at=time.time())
    return summary


def write_summary(run: RunDir, *, status: str = "running") -> dict[str, Any]:
    """Recompute ``summary.json`` from ``starts.jsonl`` (phases in the engine's order)."""
    starts = list(iter_jsonl(run.path / STARTS_FILE))
    phase_order: list[str] = next((s["phase_order"] for s in starts if s.get("phase_order")), [])
    summary = {
        "kind": "repro-startup",
        "startup": startup_summary(starts, phase_order),
        "incidents": [s["incident"] for s in starts if s.get("incident")],
        "lost": [
            {"n": s["n"], "outcome": s["outcome"], "detail": s.get("detail")}
            for s in starts
            if s.get("outcome") not in ("healthy", "hang", "crash")
        ],
        "campaign": {"id": run.run_id, "status": status},
    }
    write_json(run.summary, summary)
    return summary


def print_start(console: Console, record: dict[str, Any], total: int, run: RunDir) -> None:
    n = record["n"]
    if record["outcome"] == "healthy":
        console.print(f"start {n}/{total}: healthy in {record['ready_s']:.1f} s")
        return
    where = f" → {run.path / record['incident']}" if record.get("incident") else ""
    label = {"hang": "HANG", "crash": "CRASH"}.get(record["outcome"], record["outcome"].upper())
    detail = record.get("detail") or ""
    console.print(f"start {n}/{total}: [bold red]{label}[/] {detail}{where}")

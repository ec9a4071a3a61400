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
from harness.engines import get_adapter
from harness.records import append_jsonl, iter_jsonl, write_json
from harness.report.startup import startup_summary
from harness.rundir import RunDir
from harness.runtime.base import ServerHandle
from harness.runtime.local import check_port_free

if TYPE_CHECKING:
    from harness.watchdog.capture import CaptureOptions, Console

STARTS_FILE = "starts.jsonl"
_OUTCOME = {"healthy": "healthy", "exited": "crash", "timeout": "hang", "log-silence": "hang"}


@dataclass(frozen=True)
class ReproOptions:
    """``--runs N``, ``--until-hang``."""

    runs: int
    until_hang: bool = False


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
    phase_order: list[str] = []
    try:
        with terminate_on_signals():
            for n in range(1, options.runs + 1):
                progress.step, progress.label = n, f"start {n}/{options.runs}"
                spec = planner(Slot(run_id=f"{n:03d}", runs_root=run.path / "starts", index=n))
                phase_order = [phase.name for phase in get_adapter(spec.engine).startup_phases]
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
                record = {
                    "n": n,
                    "run_id": spec.run_id,
                    "run_dir": str(start_run.path.relative_to(run.path)),
                    "started_at": round(began, 3),
                    "outcome": outcome,
                    "ready_s": round(result.elapsed_s, 3) if result.healthy else None,
                    "elapsed_s": round(result.elapsed_s, 3),
                    "phases": {name: round(at, 3) for name, at in result.phases},
                    "last_phase": result.phases[-1][0] if result.phases else None,
                    "detail": None if result.healthy else startup_message(spec, result),
                    "exit_code": result.exit_code,
                    "incident": str(started.incident.path.relative_to(run.path))
                    if started.incident
                    else None,
                }
                keep = outcome == "hang" and options.until_hang and spec.watch.on_hang == "keep"
                if keep:
                    kept = spec.run_id
                    live.clear()
                else:
                    stop_began = time.monotonic()
                    started.handle.stop()
                    live.clear()
                    record["stop_s"] = round(time.monotonic() - stop_began, 3)
                append_jsonl(starts_file, record)
                if outcome != "healthy":
                    progress.incidents += 1
                    progress.hangs += outcome == "hang"
                _print_start(console, record, options.runs, run)
                write_summary(run, phase_order)
                if outcome == "hang" and options.until_hang:
                    break
    except (KeyboardInterrupt, Terminated):
        status = "interrupted"
        console.print("stopping ...")
    finally:
        for handle in live:
            handle.stop()
    summary = write_summary(run, phase_order, status=status)
    if kept:
        summary["kept"] = kept
        console.print(
            f"the hung server is kept for inspection: harness dump {run.path / 'starts' / kept}; "
            f"harness down {run.path / 'starts' / kept}"
        )
    update_campaign(run, status=status, ended_at=time.time())
    return summary


def write_summary(
    run: RunDir, phase_order: list[str], *, status: str = "running"
) -> dict[str, Any]:
    """Recompute ``summary.json`` from ``starts.jsonl`` (phases in the engine's order)."""
    starts = list(iter_jsonl(run.path / STARTS_FILE))
    summary = {
        "kind": "repro-startup",
        "startup": startup_summary(starts, phase_order),
        "incidents": [s["incident"] for s in starts if s.get("incident")],
        "campaign": {"id": run.run_id, "status": status},
    }
    write_json(run.summary, summary)
    return summary


def _print_start(console: Console, record: dict[str, Any], total: int, run: RunDir) -> None:
    n = record["n"]
    if record["outcome"] == "healthy":
        console.print(f"start {n}/{total}: healthy in {record['ready_s']:.1f} s")
        return
    where = f" → {run.path / record['incident']}" if record.get("incident") else ""
    label = "HANG" if record["outcome"] == "hang" else "CRASH"
    console.print(f"start {n}/{total}: [bold red]{label}[/] {record['detail']}{where}")

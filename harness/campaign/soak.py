"""``harness soak``: server + load + watchdog for hours or days; on a hang: capture, restart under
the same plan, continue. Resumable after harness itself dies.

The soak is one run directory: ``launch_spec.json`` (the plan every restart uses),
``server.log`` (every server's output, appended), ``requests.jsonl`` (every request of every
segment, appended and flushed one line at a time), ``incidents/<n>/``, ``soak.json`` (the
checkpoint: elapsed time, segments, restarts, rewritten atomically every few seconds) and, at the
end, ``summary.json`` and the reports. A *segment* is one server's life under load.

Resume (``harness soak --resume RUN_ID``) after a SIGKILL or a power loss: the orphaned server
is stopped, a torn last line of ``requests.jsonl`` is cut, the request numbering continues after
the highest index recorded (so no request is counted twice and the seeded sequence goes on),
and the elapsed time and incident count carry on from the checkpoint (at most
:data:`CHECKPOINT_S` of elapsed time can be lost).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.campaign.base import Progress, read_campaign, update_campaign
from harness.campaign.loadplan import LoadPlan
from harness.campaign.server import launch, startup_message
from harness.campaign.session import load_under_watch
from harness.campaign.signals import Terminated, terminate_on_signals
from harness.errors import BadInput, EnvironmentProblem
from harness.procgroup import ProcessRef
from harness.records import iter_jsonl, read_json, repair_jsonl, write_json
from harness.redact import restore_masked_env
from harness.report.aggregate import RecordStats
from harness.report.intervals import poisson_rate, wilson
from harness.report.stats import auto_window_s
from harness.rundir import RunDir
from harness.runtime.base import ServerHandle
from harness.runtime.local import stop_local_run
from harness.spec import LaunchSpec

if TYPE_CHECKING:
    from harness.console import Console
    from harness.watchdog.capture import CaptureOptions

STATE_FILE = "soak.json"
#: How often the checkpoint (elapsed time) is written while a soak runs.
CHECKPOINT_S = 5.0


@dataclass(frozen=True)
class SoakOptions:
    """``--duration``, ``--max-failed-starts``."""

    duration_s: float
    max_failed_starts: int = 3


class _Clock:
    """Elapsed soak time across harness processes: what earlier processes recorded plus this
    process's monotonic time; a thread writes it to the checkpoint every few seconds."""

    def __init__(self, run: RunDir, before_s: float) -> None:
        self.run = run
        self.before_s = before_s
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="harness-soak-clock", daemon=True)
        self._lock = threading.Lock()

    def elapsed_s(self) -> float:
        return self.before_s + time.monotonic() - self.started

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(CHECKPOINT_S):
            self.checkpoint()

    def checkpoint(self, **changes: Any) -> dict[str, Any]:
        with self._lock:
            state = read_json(self.run.path / STATE_FILE)
            state.update(changes)
            state["elapsed_s"] = round(self.elapsed_s(), 3)
            state["checkpoint_at"] = time.time()
            write_json(self.run.path / STATE_FILE, state)
            return state

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def start_soak_state(run: RunDir, options: SoakOptions) -> None:
    """The first checkpoint of a new soak."""
    write_json(
        run.path / STATE_FILE,
        {
            "duration_s": options.duration_s,
            "elapsed_s": 0.0,
            "segments": [],
            "restarts": 0,
            "failed_starts": 0,
            "resumes": 0,
            "checkpoint_at": time.time(),
        },
    )


def prepare_resume(run: RunDir) -> tuple[LaunchSpec, LoadPlan, SoakOptions]:
    """Check that ``run`` is a soak that can go on, stop what its killed harness left running,
    repair its records; returns what the soak needs to continue."""
    from harness.campaign.base import require_campaign

    record = require_campaign(run, "soak")
    if record.get("status") == "done":
        raise BadInput(f"soak {run.run_id} already finished; see {run.path / 'report.html'}")
    owner = ProcessRef.from_dict(record.get("owner"))
    if owner is not None and owner.alive():
        raise EnvironmentProblem(
            f"soak {run.run_id} is still running (harness pid {owner.pid})",
            hint=f"stop it first (kill {owner.pid}), or wait for it to end",
        )
    try:
        spec = LaunchSpec.from_json(run.launch_spec.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"soak {run.run_id} has no readable launch_spec.json: {exc}") from None
    spec = with_secrets_from_environment(spec)
    options = record.get("options", {})
    plan = LoadPlan.model_validate(options.get("load", {}))
    soak = SoakOptions(
        duration_s=float(options["duration_s"]),
        max_failed_starts=int(options.get("max_failed_starts", 3)),
    )
    # The killed harness's server runs on in its own session: stop it (and its watcher).
    if spec.runtime == "docker":
        from harness.runtime.docker_runs import docker_down

        docker_down(spec.run_id)
    else:
        stop_local_run(run, grace_s=spec.deadlines.stop_grace_s)
    repair_jsonl(run.requests)
    state = read_json(run.path / STATE_FILE)
    state["resumes"] = int(state.get("resumes", 0)) + 1
    write_json(run.path / STATE_FILE, state)
    return spec, plan, soak


def with_secrets_from_environment(spec: LaunchSpec) -> LaunchSpec:
    """A plan read back from ``launch_spec.json`` has its secrets masked: take them from this
    process's environment (exported by the user), or refuse rather than start the server
    with a mask for a key."""
    env = restore_masked_env(spec.env, os.environ)
    missing = sorted(set(spec.env) - set(env))
    if missing:
        raise BadInput(
            f"the plan's secret {', '.join(missing)} is not recorded (runs/ never holds "
            "secrets) and is not in this environment",
            hint=f"export {missing[0]}=... and resume again",
        )
    return spec.model_copy(update={"env": env})


def next_request_index(run: RunDir) -> int:
    """One past the highest request index recorded (0 for none)."""
    highest = -1
    for record in iter_jsonl(run.requests):
        index = record.get("index")
        if isinstance(index, int) and index > highest:
            highest = index
    return highest + 1


def run_soak(
    run: RunDir,
    spec: LaunchSpec,
    plan: LoadPlan,
    options: SoakOptions,
    *,
    console: Console,
    progress: Progress,
    capture_options: CaptureOptions | None = None,
) -> dict[str, Any]:
    """Run (or go on with) the soak in ``run``; returns the summary written to summary.json."""
    state = read_json(run.path / STATE_FILE)
    clock = _Clock(run, float(state.get("elapsed_s", 0.0)))
    progress.elapsed_before_s = clock.before_s
    progress.deadline_s = options.duration_s
    progress.incidents = _count_incidents(run)
    update_campaign(run, status="running", owner=ProcessRef.of(os.getpid()).to_dict())
    live: list[ServerHandle] = []
    status = "done"
    consecutive_failed = 0
    launches = 0
    clock.start()
    try:
        with terminate_on_signals():
            while (remaining := options.duration_s - clock.elapsed_s()) > 0:
                progress.phase = "starting server" if launches == 0 else "restarting server"
                if launches:
                    state = clock.checkpoint(restarts=state.get("restarts", 0) + 1)
                launches += 1
                started = launch(
                    spec,
                    run,
                    observer=progress,
                    console=console,
                    capture=True,
                    capture_options=capture_options,
                    on_started=live.append,
                )
                if not started.healthy:
                    consecutive_failed += 1
                    progress.incidents += started.incident is not None
                    console.print(
                        f"[red]start failed[/] ({consecutive_failed}/{options.max_failed_starts}):"
                        f" {startup_message(spec, started.startup)}"
                    )
                    started.handle.stop()
                    live.clear()
                    state = clock.checkpoint(failed_starts=state.get("failed_starts", 0) + 1)
                    if consecutive_failed >= options.max_failed_starts:
                        status = "failed"
                        break
                    continue
                consecutive_failed = 0
                first_index = next_request_index(run)
                progress.phase = "load"
                remaining = options.duration_s - clock.elapsed_s()
                segment = load_under_watch(
                    started.handle,
                    plan.config(spec, duration_s=max(remaining, 0.001), first_index=first_index),
                    out_dir=run.path,
                    console=console,
                    capture_options=capture_options,
                    on_runner=lambda r: setattr(progress, "runner", r),
                )
                progress.runner = None
                started.handle.stop()
                live.clear()
                progress.incidents += len(segment.incidents)
                sent = (segment.summary or {}).get("requests", {}).get("sent", 0)
                entry = {
                    "started_at": round(segment.started_at, 3),
                    "ended_at": round(segment.ended_at, 3),
                    "first_index": first_index,
                    "sent": sent,
                    "stopped_by": segment.stopped_by,
                    "incidents": [str(i.path.relative_to(run.path)) for i in segment.incidents],
                }
                state = clock.checkpoint(segments=[*state.get("segments", []), entry])
                if segment.stopped_by == "done":
                    break
    except (KeyboardInterrupt, Terminated):
        status = "interrupted"
        console.print("stopping ...")
    finally:
        for handle in live:
            handle.stop()
        clock.stop()
        clock.checkpoint()
    summary = write_summary(run, status=status)
    update_campaign(run, status=status, ended_at=time.time(), owner=None)
    return summary


def _count_incidents(run: RunDir) -> int:
    if not run.incidents.is_dir():
        return 0
    return sum(1 for p in run.incidents.iterdir() if (p / "incident.json").exists())


def write_summary(run: RunDir, *, status: str) -> dict[str, Any]:
    """Recompute ``summary.json`` over every request and incident of the soak."""
    record = read_campaign(run)
    state = read_json(run.path / STATE_FILE)
    elapsed = float(state.get("elapsed_s", 0.0))
    t0 = float(record.get("created_at", time.time()))
    options = record.get("options", {})
    plan = LoadPlan.model_validate(options.get("load", {}))
    stats = RecordStats(t0, window_s=auto_window_s(elapsed or None), slo=plan.slo)
    stats.extend(iter_jsonl(run.requests))
    summary = stats.summary(elapsed_s=elapsed or None)
    incidents = (
        sorted((p for p in run.incidents.glob("*/incident.json")), key=lambda p: int(p.parent.name))
        if run.incidents.is_dir()
        else []
    )
    marks = [_incident_mark(p, t0) for p in incidents]
    hangs = len(incidents)
    finished = stats.finished
    hours = elapsed / 3600.0
    summary["rate"] = {"requested": plan.rate, "concurrency": plan.concurrency}
    summary["soak"] = {
        "status": status,
        "duration_s": options.get("duration_s"),
        "elapsed_s": round(elapsed, 3),
        "incidents": hangs,
        "restarts": state.get("restarts", 0),
        "failed_starts": state.get("failed_starts", 0),
        "resumes": state.get("resumes", 0),
        "segments": len(state.get("segments", [])),
        "hangs_per_1000_requests": wilson(hangs, finished).scaled(1000.0).to_dict()
        if finished >= hangs
        else None,
        "hangs_per_hour": poisson_rate(hangs, hours).to_dict(),
        "incident_marks": marks,
    }
    summary["kind"] = "soak"
    write_json(run.summary, summary)
    _write_result_files(run, summary)
    return summary


def _incident_mark(path: Path, t0: float) -> dict[str, Any]:
    """When an incident happened (seconds from the soak's start) and what it was."""
    data = read_json(path)
    at = None
    with contextlib.suppress(TypeError, ValueError):
        at = dt.datetime.fromisoformat(str(data.get("detected_at"))).timestamp() - t0
    return {
        "incident": str(path.parent.name),
        "kind": data.get("kind"),
        "at_s": None if at is None else round(at, 3),
        "summary": f"incidents/{path.parent.name}/summary.md",
    }


def _write_result_files(run: RunDir, summary: dict[str, Any]) -> None:
    """bench_result.json and requests.csv over the whole soak (vllm bench serve's format)."""
    try:
        from harness.load.results import write_result_files
    except ImportError:
        return
    write_result_files(run.path, summary, run.requests)

"""The background watcher of a detached server (``harness serve --detach``).

``python -m harness.campaign.watcher --run-dir DIR`` attaches to the run's live server (a local
process group or a container) and runs the same watchdog ``harness serve`` runs in the
foreground, with the plan's ``--on-hang`` policy, writing incidents into the run directory and
its own lines to ``watchdog.log``. It is started in its own session, recorded in state.json as
``watcher`` (pid and start time), and stopped by ``harness down`` before the server, so a
detached server is never left unwatched and a stopped one is never reported as a crash.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from harness import procgroup
from harness.procgroup import ProcessRef
from harness.redact import MASK, is_secret_name, restore_masked_env
from harness.rundir import RunDir
from harness.spec import LaunchSpec

WATCHDOG_LOG = "watchdog.log"
#: Seconds ``harness down`` gives the watcher to finish an incident capture it is writing.
STOP_GRACE_S = 20.0


def spawn_watcher(run: RunDir, spec: LaunchSpec) -> ProcessRef:
    """Start the background watcher of ``run``; record and return it. The plan's secret
    variables travel in the watcher's environment (launch_spec.json has them masked), so that
    a restart after a hang starts the server with them."""
    argv = [sys.executable, "-m", "harness.campaign.watcher", "--run-dir", str(run.path)]
    secrets = {k: v for k, v in spec.env.items() if is_secret_name(k) and v != MASK}
    with open(run.path / WATCHDOG_LOG, "ab") as log:
        proc = procgroup.spawn(argv, stdout=log, env={**os.environ, **secrets}, cwd=run.path)
    ref = ProcessRef.of(proc.pid)
    run.write_state(watcher=ref.to_dict())
    return ref


def stop_watcher(run: RunDir, grace_s: float = STOP_GRACE_S) -> bool:
    """Stop the background watcher of ``run`` if one runs (it lets an incident capture in
    progress finish within ``grace_s``). Returns whether one was running."""
    ref = ProcessRef.from_dict(run.read_state().get("watcher"))
    if ref is None:
        return False
    return procgroup.stop_ref(ref, grace_s=grace_s)


def watcher_alive(run: RunDir) -> bool:
    """Whether ``run`` has a live background watcher."""
    ref = ProcessRef.from_dict(run.read_state().get("watcher"))
    return ref is not None and ref.alive()


def watch_detached(run: RunDir) -> int:
    """Attach to ``run``'s server and watch it until it stops, the watch ends by policy, or
    SIGTERM (``harness down``). Returns the watch's exit code (1 after an incident)."""
    from rich.console import Console

    from harness.campaign.server import attach_server, launch
    from harness.errors import HarnessError, StartupFailed
    from harness.runtime.base import ServerHandle
    from harness.watchdog.monitor import watch_server

    console = Console(file=sys.stdout, force_terminal=False, width=10_000, soft_wrap=True)
    stop_event = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    spec = LaunchSpec.from_json(run.launch_spec.read_text())
    spec = spec.model_copy(update={"env": restore_masked_env(spec.env, os.environ)})
    try:
        handle = attach_server(spec, run)
    except HarnessError as exc:
        console.print(f"watcher: {exc.message}")
        return 3

    def restart() -> ServerHandle:
        started = launch(spec, run, console=console)
        if not started.healthy:
            raise StartupFailed("restart after a hang did not become healthy")
        run.write_state(status="healthy")
        console.print("watcher: restarted the server")
        return started.handle

    console.print(f"watcher: pid {os.getpid()} watching run {run.run_id}")
    code = watch_server(
        handle,
        spec.watch,
        console=console,
        stop_event=stop_event,
        restart=restart,
        on_incident=lambda incident: console.print(f"incident: {incident.summary_path}"),
    )
    console.print(f"watcher: done (exit {code})")
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m harness.campaign.watcher``."""
    parser = argparse.ArgumentParser(prog="python -m harness.campaign.watcher")
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    return watch_detached(RunDir(args.run_dir.resolve()))


if __name__ == "__main__":
    raise SystemExit(main())

"""``harness serve``'s lifecycle on the simulated engine (real processes, real watchdog):
signals in every state, --on-hang keep / stop / restart, after a failed start and after a hang,
a crash after healthy. Every test ends with no server left."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from harness.procgroup import ProcessRef
from harness.records import read_json
from tests.conftest import free_port
from tests.integration.harnesscli import (
    finish,
    only_dir,
    run,
    running_members,
    start,
    stop,
    wait_for,
)

pytestmark = pytest.mark.integration


def serve(runs: Path, *extra: str) -> subprocess.Popen[str]:
    return start(
        runs, "serve", "--engine", "sim", "--model", "sim", "--port", str(free_port()), *extra
    )


def server_of(runs: Path) -> ProcessRef:
    ref = ProcessRef.from_dict(read_json(only_dir(runs) / "state.json"))
    assert ref is not None
    return ref


def state_says(runs: Path, status: str) -> bool:
    return any(runs.iterdir()) and read_json(only_dir(runs) / "state.json").get("status") == status


def incident(runs: Path, n: int) -> Path:
    return only_dir(runs) / "incidents" / str(n) / "summary.md"


#: Startup phases of the simulator: (serve options, the log line that says the phase began).
STARTUP_PHASES = {
    "engine initialising": (["--engine-arg", "--startup-s 60"], "non-default args"),
    "workers started": (["--tp", "2", "--engine-arg", "--startup-s 60"], "sim::Worker_TP1 pid="),
    "hung in distributed init": (
        ["--tp", "2", "--fault", "startup-hang:p=1"],
        "Initializing distributed environment",
    ),
}


@pytest.mark.parametrize("phase", STARTUP_PHASES)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_startup_stops_everything(
    campaign_runs: Path, sig: signal.Signals, phase: str
) -> None:
    options, line = STARTUP_PHASES[phase]
    proc = serve(campaign_runs, *options)
    try:
        wait_for(lambda: state_says(campaign_runs, "starting"), 60, "the server to start")
        server = server_of(campaign_runs)
        wait_for(
            lambda: line in (only_dir(campaign_runs) / "server.log").read_text(),
            60,
            f"the engine's log line {line!r}",
        )
        proc.send_signal(sig)
        res = finish(proc, 60)
    finally:
        stop(proc)
    assert res.returncode == 0, res.stderr
    assert "stopping" in res.stderr
    assert not server.alive()
    assert running_members(server.pid) == []  # the workers too
    assert read_json(only_dir(campaign_runs) / "state.json")["status"] == "stopped"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_watching_a_healthy_server_stops_everything(
    campaign_runs: Path, sig: signal.Signals
) -> None:
    proc = serve(campaign_runs)
    try:
        wait_for(lambda: state_says(campaign_runs, "healthy"), 60, "healthy")
        server = server_of(campaign_runs)
        proc.send_signal(sig)
        res = finish(proc, 60)
    finally:
        stop(proc)
    assert res.returncode == 0, res.stderr
    assert not server.alive()


def test_stopped_after_a_recorded_hang_exits_1(campaign_runs: Path) -> None:
    proc = serve(campaign_runs, "--fault", "engine-stall:at=2", "--stall-after", "2")
    try:
        wait_for(
            lambda: any(campaign_runs.iterdir()) and incident(campaign_runs, 1).exists(),
            90,
            "the hang's incident",
        )
        server = server_of(campaign_runs)
        assert server.alive(), "--on-hang keep (the default) keeps the server"
        proc.send_signal(signal.SIGTERM)
        res = finish(proc, 60)
    finally:
        stop(proc)
    assert res.returncode == 1, res.stderr
    assert "engine-stall" in res.stderr and "summary.md" in res.stderr
    assert not server.alive()


def test_on_hang_restart_starts_a_fresh_server_and_watches_it(campaign_runs: Path) -> None:
    proc = serve(
        campaign_runs, "--fault", "engine-stall:at=2", "--stall-after", "2", "--on-hang", "restart"
    )
    try:
        wait_for(
            lambda: any(campaign_runs.iterdir()) and incident(campaign_runs, 2).exists(),
            180,
            "a second incident after the restart",
        )
        state = read_json(only_dir(campaign_runs) / "state.json")
        assert state["restarts"] >= 1
        proc.send_signal(signal.SIGINT)
        res = finish(proc, 60)
    finally:
        stop(proc)
    assert res.returncode == 1
    assert "restarted" in res.stderr
    assert not server_of(campaign_runs).alive()
    log = (only_dir(campaign_runs) / "server.log").read_text()
    assert log.count("injected engine-stall") >= 2


def test_a_crash_after_healthy_is_a_crash_incident(campaign_runs: Path) -> None:
    res = finish(serve(campaign_runs, "--fault", "crash:at=2,code=3"), 120)
    assert res.returncode == 1
    summary = incident(campaign_runs, 1)
    assert summary.exists()
    assert read_json(summary.parent / "incident.json")["kind"] == "crash"
    assert "code 3" in summary.read_text()


def test_a_failed_start_kept_for_a_human_can_be_dumped_then_downed(campaign_runs: Path) -> None:
    res = finish(serve(campaign_runs, "--fault", "startup-hang:p=1", "--startup-timeout", "3"), 120)
    assert res.returncode == 1
    assert "keeping the server for inspection" in res.stderr
    run_dir = only_dir(campaign_runs)
    assert read_json(run_dir / "incidents" / "1" / "incident.json")["kind"] == "startup-hang"
    server = server_of(campaign_runs)
    assert server.alive()
    dump = run(campaign_runs, "dump", run_dir.name, timeout=120)
    assert dump.returncode == 0, dump.stderr
    assert (run_dir / "incidents" / "2" / "summary.md").exists()
    down = run(campaign_runs, "down", run_dir.name, timeout=60)
    assert down.returncode == 0 and not server.alive()


def test_a_failed_start_with_on_hang_stop_leaves_nothing(campaign_runs: Path) -> None:
    res = finish(
        serve(
            campaign_runs,
            "--fault",
            "startup-hang:p=1",
            "--startup-timeout",
            "3",
            "--on-hang",
            "stop",
        ),
        120,
    )
    assert res.returncode == 1
    assert "not healthy after" in res.stderr
    assert (only_dir(campaign_runs) / "incidents" / "1" / "summary.md").exists()
    assert not server_of(campaign_runs).alive()
    # The log lines shown after a failed start are printed as they are (no markup tags).
    assert "[dim]" not in res.stderr and "[/]" not in res.stderr

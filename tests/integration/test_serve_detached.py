"""``harness serve --detach`` leaves a watched server: a hang under ``harness load --run``
becomes an incident with no harness in the foreground, and ``harness down`` stops the watcher
before the server (so the stop is not taken for a crash)."""

from __future__ import annotations

from pathlib import Path

from harness.procgroup import ProcessRef
from harness.records import read_json
from tests.conftest import free_port
from tests.integration.harnesscli import only_dir, run, wait_for


def test_detached_server_keeps_its_watchdog(campaign_runs: Path) -> None:
    port = free_port()
    res = run(
        campaign_runs,
        "serve",
        "--engine",
        "sim",
        "--model",
        "sim",
        "--port",
        str(port),
        "--fault",
        "engine-stall:at=4",
        "--stall-after",
        "3",
        "--detach",
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    run_dir = only_dir(campaign_runs)
    state = read_json(run_dir / "state.json")
    watcher = ProcessRef.from_dict(state["watcher"])
    server = ProcessRef.from_dict(state)
    assert watcher is not None and watcher.alive()
    assert server is not None and server.alive()
    assert "watched" in run(campaign_runs, "ps", timeout=60).stdout

    load = run(
        campaign_runs,
        "load",
        "--run",
        run_dir.name,
        "-c",
        "2",
        "--duration",
        "8",
        "--stall-after",
        "3",
        "--no-progress",
        timeout=120,
    )
    assert load.returncode == 0, load.stderr
    wait_for(
        lambda: (run_dir / "incidents" / "1" / "summary.md").exists(),
        timeout=90,
        what="the background watcher's incident",
    )
    incident = read_json(run_dir / "incidents" / "1" / "incident.json")
    assert incident["kind"] in ("engine-stall", "request-stall", "canary-stall")
    assert "incident:" in (run_dir / "watchdog.log").read_text()

    down = run(campaign_runs, "down", run_dir.name, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not watcher.alive() and not server.alive()
    # The watcher was stopped first: no crash incident for the deliberate stop.
    kinds = [read_json(p)["kind"] for p in run_dir.glob("incidents/*/incident.json")]
    assert "crash" not in kinds

"""The simulated engine's injected TP worker stall, caught by the watchdog in ``harness serve``."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.campaign.server import start_server
from harness.plan import HostFacts, PlanRequest, make_plan
from harness.rundir import RunDir
from harness.watchdog.capture import Incident
from harness.watchdog.monitor import watch_server
from tests.conftest import free_port
from tests.integration.bundles import py_spy_stacks
from tests.integration.harnesscli import run, wait_for
from tests.integration.servers import wait_healthy

pytestmark = pytest.mark.integration


def test_sim_worker_stall_is_detected_and_the_spinning_worker_named(campaign_runs: Path) -> None:
    runs = campaign_runs
    proc = run(
        runs, "serve", "--engine", "sim", "--model", "sim", "--tp", "2",
        "--fault", "worker-stall:rank=1,at=8", "--stall-after", "6", "--runtime", "local",
        "--on-hang", "stop", "--port", str(free_port()),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    (summary,) = runs.glob("*/incidents/1/summary.md")
    lines = summary.read_text().splitlines()
    assert lines[0].startswith("engine-stall")
    assert lines[1].startswith("Worker_TP1 spins at"), lines[1]
    incident = json.loads((summary.parent / "incident.json").read_text())
    roles = {p["role"]: p for p in incident["processes"]}
    assert {"Worker_TP0", "Worker_TP1"} <= set(roles)
    assert len(list((summary.parent / "stacks").glob("*.txt"))) >= 3
    # Stacks py-spy really took: the spinning worker, its peer waiting in the collective.
    py_spy_stacks(summary.parent, roles["Worker_TP1"]["pid"])
    py_spy_stacks(summary.parent, roles["Worker_TP0"]["pid"], frame="all_reduce")


class Lines:
    """A console that keeps what the watchdog prints."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, *objects: Any, **_kwargs: Any) -> None:
        self.lines.append(" ".join(map(str, objects)))


def test_a_stall_the_load_records_as_the_watch_stops_is_still_an_incident(tmp_path: Path) -> None:
    """A load ends on a stall (its stall timeout ends the request), then the campaign stops
    the watch at once: the stall is still one incident, captured before the watch ends."""
    request = PlanRequest(
        engine="sim", model="sim", run_id="laststall", runs_root=str(tmp_path), port=free_port()
    )
    spec = make_plan(request, HostFacts(device="cpu", cpu_count=2, python=sys.executable))
    run_dir = RunDir(Path(spec.run_dir))
    run_dir.create()
    handle = start_server(spec, run_dir)
    try:
        wait_healthy(spec.health_url, 60)
        console = Lines()
        stop_event = threading.Event()
        incidents: list[Incident] = []
        codes: list[int] = []

        def watch() -> None:
            settings = spec.watch.model_copy(update={"on_hang": "stop"})
            codes.append(
                watch_server(
                    handle, settings, console=console, stop_event=stop_event,
                    on_incident=incidents.append, tick_s=5.0,
                )
            )  # fmt: skip

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        wait_for(lambda: any("watchdog on" in x for x in console.lines), 30, "the watchdog")
        time.sleep(0.5)  # inside its first 5 s wait: the record comes after its last look
        stall = {"index": 0, "status": "stalled", "request_id": "req-last", "output_tokens": 7}
        with run_dir.requests.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(stall) + "\n")
        stop_event.set()
        thread.join(120)
        assert not thread.is_alive()
    finally:
        handle.stop()
    assert codes == [1]
    (incident,) = incidents
    assert incident.verdict.kind == "request-stall"
    assert "req-last" in incident.verdict.detail
    assert (incident.path / "summary.md").read_text().startswith("request-stall")

"""``harness replay`` on the simulated engine: a ``stall`` incident filed under ``harness serve``
with ``harness load --run`` is replayed on fresh servers started from the incident's own plan
(the hang comes back every time, each attempt with its own incident), and against a healthy
server (``--url``: it never does); the rate comes with its Wilson interval and ``harness
report`` renders the replay."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.harnesscli import finish, run, start, stop, stop_all_under, wait_for
from tests.integration.servers import sim_server, wait_healthy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stall_incident(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A stall incident of the simulator (every request, the watchdog's canary included, stops
    before its first token), filed while two load requests were in flight; the server is
    stopped by then. The load's own stall limit is longer than the watchdog's."""
    runs = tmp_path_factory.mktemp("replay") / "runs"
    port = free_port()
    serve = start(
        runs, "serve", "--engine", "sim", "--model", "sim", "--runtime", "local",
        "--fault", "stall:p=1,after=0", "--stall-after", "12", "--on-hang", "stop",
        "--port", str(port),
    )  # fmt: skip
    load: subprocess.Popen[str] | None = None
    try:
        spec = wait_for(
            lambda: next(runs.glob("*/launch_spec.json"), None),
            60,
            "launch_spec.json",
            procs=[serve],
        )
        wait_healthy(f"http://127.0.0.1:{port}/health", 60, proc=serve)
        load = start(
            runs, "load", "--run", spec.parent.name, "--no-progress", "-w", "chat-short",
            "-c", "2", "--requests", "2", "--max-tokens", "20", "--stall-after", "60",
        )  # fmt: skip
        served = finish(serve, 120)
        assert served.returncode == 1, served.stdout[-3000:] + served.stderr[-3000:]
        finish(load, 120)
    finally:
        # A module-scoped fixture: its processes are its own to stop.
        stop(serve)
        if load is not None:
            stop(load)
        stop_all_under(runs)
    (incident,) = spec.parent.glob("incidents/*/")
    try:
        yield incident
    finally:
        stop_all_under(runs)  # any server a replay of the tests left behind


def test_replay_on_fresh_servers_brings_the_stall_back(stall_incident: Path) -> None:
    entries = [json.loads(x) for x in (stall_incident / "inflight.jsonl").read_text().splitlines()]
    assert [e.get("source") for e in entries].count("load") == 2, entries
    # Every request in flight is replayed: the load's two and the watchdog's canary.
    originals = sorted(json.dumps(e.get("body") or e.get("payload")) for e in entries)
    runs = stall_incident.parents[2]
    began = time.monotonic()
    out = run(runs, "replay", str(stall_incident), "--times", "2", "--stall-after", "4")
    took = time.monotonic() - began
    assert out.returncode == 1, out.stdout + out.stderr  # the hang came back
    assert "the hang came back in 2 of 2 attempt(s)" in out.stderr
    (replay,) = runs.glob("*-replay-*")
    summary = json.loads((replay / "summary.json").read_text())
    r = summary["replay"]
    assert (r["attempts"], r["reproduced"], r["rate"]) == (2, 2, 1.0)
    low, high = r["ci95"]
    assert 0.3 < low < 0.35 and high == 1.0  # Wilson: 2 of 2
    assert r["source"]["incident"] == str(stall_incident.resolve())
    attempts = [json.loads(x) for x in (replay / "attempts.jsonl").read_text().splitlines()]
    assert [a["outcome"] for a in attempts] == ["reproduced", "reproduced"]
    # A fresh server for each hang, each with its own incident, linked.
    assert [a["server"] for a in attempts] == ["servers/001", "servers/002"]
    assert r["incidents"] == [a["incident"] for a in attempts]
    for a in attempts:
        bundle = replay / a["incident"]
        assert (
            (bundle / "summary.md")
            .read_text()
            .splitlines()[2]
            .startswith(("likely: ", "no known signature matched"))
        )
        # The requests in flight at the new hang are the replayed ones, exact bodies.
        again = [json.loads(x) for x in (bundle / "inflight.jsonl").read_text().splitlines()]
        replayed = sorted(json.dumps(e["body"]) for e in again if e.get("source") == "load")
        assert replayed == originals
    report = (replay / "report.md").read_text()
    assert "came back in 2 of 2 attempt(s)" in report
    print(f"replay of 2 attempts took {took:.1f} s")


def test_replay_against_a_healthy_server_does_not_reproduce(
    stall_incident: Path, tmp_path: Path
) -> None:
    with sim_server() as (url, _):
        out = run(
            tmp_path, "replay", str(stall_incident), "--url", url, "--times", "2",
            "--stall-after", "5", timeout=180,
        )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    (replay,) = tmp_path.glob("*-replay-*")
    r = json.loads((replay / "summary.json").read_text())["replay"]
    assert (r["attempts"], r["reproduced"], r["rate"]) == (2, 0, 0.0)
    assert r["ci95"][0] == 0.0 and 0.6 < r["ci95"][1] < 0.7
    sent = len((replay / "replayed.jsonl").read_text().splitlines())
    assert sent == 3  # the two load requests and the canary
    records = [json.loads(x) for x in (replay / "load" / "requests.jsonl").read_text().splitlines()]
    assert len(records) == 2 * sent and all(x["status"] == "ok" for x in records)


def test_an_incident_without_inflight_jsonl_is_bad_input(tmp_path: Path) -> None:
    bundle = tmp_path / "incidents" / "1"
    bundle.mkdir(parents=True)
    (bundle / "summary.md").write_text("x\n")
    out = run(tmp_path / "runs", "replay", str(bundle), timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: {bundle}: no inflight.jsonl"), out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "runs").exists()

"""``harness replay`` on the simulated engine: a ``stall`` incident filed under ``harness serve``
with ``harness load --run`` is replayed on fresh servers started from the incident's own plan
(the hang comes back every time, each attempt with its own incident), and against a healthy
server (``--url``: it never does); the rate comes with its Wilson interval and ``harness
report`` renders the replay."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration

HARNESS = [sys.executable, "-m", "harness"]


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def _healthy(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url + "/health", timeout=2).status_code == 200
    return False


def _wait(what: str, ok: Any, deadline_s: float, proc: subprocess.Popen[str]) -> Any:
    deadline = time.monotonic() + deadline_s
    while not (value := ok()):
        assert proc.poll() is None, f"{what}: the process exited ({proc.returncode})"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


@pytest.fixture(scope="module")
def stall_incident(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A stall incident of the simulator (every request, the watchdog's canary included, stops
    before its first token), filed while two load requests were in flight; the server is
    stopped by then. The load's own stall limit is longer than the watchdog's."""
    runs = tmp_path_factory.mktemp("replay") / "runs"
    port = free_port()
    serve = subprocess.Popen(
        [*HARNESS, "serve", "--engine", "sim", "--model", "sim", "--runtime", "local",
         "--fault", "stall:p=1,after=0", "--stall-after", "12", "--on-hang", "stop",
         "--port", str(port), "--runs-dir", str(runs)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    load: subprocess.Popen[str] | None = None
    try:
        spec = _wait(
            "launch_spec.json", lambda: next(runs.glob("*/launch_spec.json"), None), 60, serve
        )
        _wait("a healthy server", lambda: _healthy(f"http://127.0.0.1:{port}"), 60, serve)
        load = subprocess.Popen(
            [*HARNESS, "load", "--run", spec.parent.name, "--runs-dir", str(runs), "--no-progress",
             "-w", "chat-short", "-c", "2", "--requests", "2", "--max-tokens", "20",
             "--stall-after", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        out, _ = serve.communicate(timeout=120)
        assert serve.returncode == 1, out[-3000:]
        load.communicate(timeout=120)
    finally:
        _stop(serve)
        if load is not None:
            _stop(load)
    (incident,) = spec.parent.glob("incidents/*/")
    yield incident


def test_replay_on_fresh_servers_brings_the_stall_back(stall_incident: Path) -> None:
    entries = [json.loads(x) for x in (stall_incident / "inflight.jsonl").read_text().splitlines()]
    assert [e.get("source") for e in entries].count("load") == 2, entries
    # Every request in flight is replayed: the load's two and the watchdog's canary.
    originals = sorted(json.dumps(e.get("body") or e.get("payload")) for e in entries)
    runs = stall_incident.parents[2]
    began = time.monotonic()
    out = subprocess.run(
        [*HARNESS, "replay", str(stall_incident), "--times", "2", "--stall-after", "4",
         "--runs-dir", str(runs)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
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
    port = free_port()
    sim = subprocess.Popen(
        [*HARNESS, "sim", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _wait("the simulator", lambda: _healthy(f"http://127.0.0.1:{port}"), 60, sim)
        out = subprocess.run(
            [*HARNESS, "replay", str(stall_incident), "--url", f"http://127.0.0.1:{port}",
             "--times", "2", "--stall-after", "5", "--runs-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        _stop(sim)
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
    out = subprocess.run(
        [*HARNESS, "replay", str(bundle), "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: {bundle}: no inflight.jsonl"), out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "runs").exists()

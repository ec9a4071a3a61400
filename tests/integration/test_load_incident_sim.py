"""``harness load --run`` publishes its in-flight requests; the watchdog of ``harness serve``
copies them, exact bodies included, into the incident a hang files (simulated engine)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.load.factory import Overrides, RequestFactory
from harness.load.tokenizer import WordTokenizer
from harness.load.workload import load_workload
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def _wait(what: str, ok: Any, deadline_s: float, *procs: subprocess.Popen[str]) -> Any:
    deadline = time.monotonic() + deadline_s
    while True:
        value = ok()
        if value:
            return value
        for proc in procs:
            assert proc.poll() is None, f"{proc.args[3]} exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _records(run: Path) -> list[dict[str, Any]]:
    try:
        lines = (run / "requests.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines]


def test_requests_in_flight_during_a_hang_reach_the_incident(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    harness = [sys.executable, "-m", "harness"]
    # The engine loop stops 20 s after the server is ready: every request in flight stalls.
    serve = subprocess.Popen(
        [*harness, "serve", "--engine", "sim", "--model", "sim", "--runtime", "local",
         "--fault", "engine-stall:at=20", "--stall-after", "3", "--on-hang", "stop",
         "--port", str(free_port()), "--runs-dir", str(runs)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    load: subprocess.Popen[str] | None = None
    try:
        spec_path = _wait(
            "launch_spec.json", lambda: next(runs.glob("*/launch_spec.json"), None), 120, serve
        )
        spec = json.loads(spec_path.read_text())
        run = spec_path.parent

        def healthy() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(spec["health_url"], timeout=2).status_code == 200
            return False

        _wait("a healthy server", healthy, 120, serve)
        # The load's own stall clock is longer than the watchdog's, so its stalled requests are
        # still in flight when the watchdog files the incident. Requests take under a second
        # (40 tokens, 20 ms apart): the simulator counts generated tokens when a request ends,
        # so longer ones would look like a stall to the metrics rule before the real one.
        load = subprocess.Popen(
            [*harness, "load", "--run", run.name, "--runs-dir", str(runs), "--no-progress",
             "-w", "chat-short", "-c", "4", "--max-tokens", "40", "--duration", "120",
             "--stall-after", "60", "--error-budget", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        serve_out, _ = serve.communicate(timeout=180)
        assert serve.returncode == 1, serve_out[-3000:]  # a hang found, server stopped
        load_out, _ = load.communicate(timeout=180)
    finally:
        _stop(serve)
        if load is not None:
            _stop(load)

    (incident,) = run.glob("incidents/*/")
    entries = [json.loads(x) for x in (incident / "inflight.jsonl").read_text().splitlines()]
    assert any(e.get("source") == "canary" for e in entries)
    published = [e for e in entries if e.get("source") == "load"]
    assert published, f"no load request in the incident; load said:\n{load_out[-3000:]}"
    records = {r["index"]: r for r in _records(run)}
    factory = RequestFactory(
        load_workload("chat-short")[0],
        model=spec["served_model_name"],
        seed=0,
        tokenizer=WordTokenizer(),
        overrides=Overrides(max_tokens=40),
    )
    for entry in published:
        assert entry["state"] == "in_flight" and entry["path"] == "/v1/chat/completions"
        # The exact body sent: request i of seed 0, rebuilt independently, for replay.
        assert entry["body"] == factory.build(entry["index"]).body
        assert entry["age_s"] >= 0 and entry["sent_at"] > 0
        # Stalled by the hang: it never finished as ok.
        assert records[entry["index"]]["status"] != "ok", records[entry["index"]]
    # The load finished cleanly and removed what it published.
    assert not (run / "inflight.json").exists() and not (run / "inflight.d").exists()
    assert (run / "bench_result.json").exists() and (run / "requests.csv").exists()

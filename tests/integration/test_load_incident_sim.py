"""``harness load --run`` publishes its in-flight requests; the watchdog of ``harness serve``
copies them, exact bodies included, into the incident a hang files (simulated engine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.load.factory import Overrides, RequestFactory
from harness.load.tokenizer import WordTokenizer
from harness.load.workload import load_workload
from tests.conftest import free_port
from tests.integration.harnesscli import finish, start, wait_for
from tests.integration.servers import wait_healthy

pytestmark = pytest.mark.integration


def _records(run: Path) -> list[dict[str, Any]]:
    try:
        lines = (run / "requests.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines]


def test_requests_in_flight_during_a_hang_reach_the_incident(campaign_runs: Path) -> None:
    runs = campaign_runs
    # The engine loop stops 20 s after the server is ready: every request in flight stalls.
    serve = start(
        runs, "serve", "--engine", "sim", "--model", "sim", "--runtime", "local",
        "--fault", "engine-stall:at=20", "--stall-after", "3", "--on-hang", "stop",
        "--port", str(free_port()),
    )  # fmt: skip
    spec_path = wait_for(
        lambda: next(runs.glob("*/launch_spec.json"), None), 120, "launch_spec.json", procs=[serve]
    )
    spec = json.loads(spec_path.read_text())
    run = spec_path.parent
    wait_healthy(spec["health_url"], 120, proc=serve)
    # The load's own stall clock is longer than the watchdog's, so its stalled requests are
    # still in flight when the watchdog files the incident. Requests take under a second
    # (40 tokens, 20 ms apart): the simulator counts generated tokens when a request ends,
    # so longer ones would look like a stall to the metrics rule before the real one.
    # The load would go on for 2 minutes: the process_trees fixture stops it if the test fails.
    load = start(
        runs, "load", "--run", run.name, "--no-progress", "-w", "chat-short", "-c", "4",
        "--max-tokens", "40", "--duration", "120", "--stall-after", "60", "--error-budget", "1",
    )  # fmt: skip
    served = finish(serve, 180)
    assert served.returncode == 1, served.stderr[-3000:]  # a hang found, server stopped
    load_out = finish(load, 180).stderr

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

"""The simulated engine's injected TP worker stall, caught by the watchdog in ``harness serve``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.bundles import py_spy_stacks
from tests.integration.harnesscli import run

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

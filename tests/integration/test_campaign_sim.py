"""Campaigns end to end on the simulated engine (real server processes, real watchdog, real
py-spy captures): repro-startup's rate and incidents, soak's one incident per injected stall
and its resume after SIGKILL, compare's tested cells, and the reports in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from harness.procgroup import ProcessRef
from harness.records import iter_jsonl, read_json
from tests.conftest import free_port, require
from tests.integration.bundles import py_spy_stacks
from tests.integration.chromium import chromium, open_in_chromium
from tests.integration.harnesscli import finish, only_dir, run, start, stop, wait_for

pytestmark = pytest.mark.integration


def injected(pattern: str, logs: list[Path]) -> int:
    """How many times the simulator said it injected a fault (independent of the watchdog)."""
    return sum(p.read_text(errors="replace").count(pattern) for p in logs if p.exists())


def incident_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("incidents/*/incident.json"))


def check_report(run_dir: Path, tmp_path: Path, *labels: str) -> None:
    """report.html opens offline in headless Chromium with every chart decoded; report.md
    names ``labels``."""
    html = run_dir / "report.html"
    assert html.exists() and (run_dir / "report.md").exists()
    text = html.read_text()
    assert "https://" not in text and 'src="http' not in text
    charts = text.count('data-chart="')
    assert charts >= 3
    require(chromium() is not None, "Debian's chromium (headless report check)")
    dom = open_in_chromium(html, tmp_path / "chromium", tmp_path / f"{run_dir.name}.png")
    rendered = re.search(r'data-charts-rendered="(\d+)"', dom)
    failed = re.search(r'data-charts-failed="(\d+)"', dom)
    assert rendered and failed, "the page's chart check did not run"
    assert int(rendered.group(1)) == charts and failed.group(1) == "0"
    md = (run_dir / "report.md").read_text()
    for label in labels:
        assert label in md


def test_repro_startup_rate_covers_p_and_every_hang_is_one_incident(
    campaign_runs: Path, tmp_path: Path
) -> None:
    port = free_port()
    res = run(
        campaign_runs,
        "repro-startup",
        "--engine",
        "sim",
        "--model",
        "sim",
        "--fault",
        "startup-hang:p=0.2",
        "--runs",
        "30",
        "--startup-timeout",
        "5",
        "--seed",
        "7",
        "--port",
        str(port),
        timeout=900,
    )
    camp = only_dir(campaign_runs)
    summary = read_json(camp / "summary.json")["startup"]
    starts = list(iter_jsonl(camp / "starts.jsonl"))
    logs = sorted(camp.glob("starts/*/server.log"))
    hangs_injected = injected("startup-hang fault:", logs)
    assert summary["runs"] == len(starts) == 30
    assert summary["hangs"] == hangs_injected > 0, res.stderr
    lo, hi = summary["ci95"]
    assert lo < 0.2 < hi
    assert summary["rate"] == pytest.approx(hangs_injected / 30, abs=1e-3)
    # One incident per hang, in the start that hung, and none for a healthy start.
    incidents = incident_dirs(camp)
    assert len(incidents) == hangs_injected
    hung = {s["run_dir"] for s in starts if s["outcome"] == "hang"}
    assert {str(p.parent.parent.relative_to(camp)) for p in incidents} == hung
    for inc in incidents:
        assert read_json(inc / "incident.json")["kind"] == "startup-hang"
        # Stacks py-spy really took, of every Python process of the hung start.
        pythons = [p["pid"] for p in read_json(inc / "incident.json")["processes"] if p["python"]]
        assert pythons
        for pid in pythons:
            py_spy_stacks(inc, pid)
    assert res.returncode == 1 and "hung" in res.stderr
    assert summary["ready_s"]["n"] == 30 - hangs_injected
    assert "ready" in summary["phases"]
    check_report(camp, tmp_path, "hang rate")
    # Every server of the campaign was stopped.
    for state in camp.glob("starts/*/state.json"):
        assert not ProcessRef.from_dict(read_json(state)).alive()  # type: ignore[union-attr]


def test_until_hang_keeps_the_hung_server_for_a_human(campaign_runs: Path) -> None:
    res = run(
        campaign_runs,
        "repro-startup",
        "--engine",
        "sim",
        "--model",
        "sim",
        "--fault",
        "startup-hang:p=1",
        "--runs",
        "5",
        "--until-hang",
        "--startup-timeout",
        "3",
        "--port",
        str(free_port()),
        timeout=120,
    )
    camp = only_dir(campaign_runs)
    assert res.returncode == 1
    assert [s["outcome"] for s in iter_jsonl(camp / "starts.jsonl")] == ["hang"]
    kept = camp / "starts" / "001"
    assert ProcessRef.from_dict(read_json(kept / "state.json")).alive()  # type: ignore[union-attr]
    assert f"harness down {kept}" in res.stderr
    down = run(campaign_runs, "down", str(kept), timeout=60)
    assert down.returncode == 0
    assert not ProcessRef.from_dict(read_json(kept / "state.json")).alive()  # type: ignore[union-attr]


def soak_args(port: int, *extra: str) -> list[str]:
    return [
        "soak",
        "--engine",
        "sim",
        "--model",
        "sim",
        "--port",
        str(port),
        "--workload",
        "chat-short",
        "--max-tokens",
        "40",
        *extra,
    ]


def indices(camp: Path) -> list[int]:
    return [int(r["index"]) for r in iter_jsonl(camp / "requests.jsonl")]


def test_soak_turns_every_injected_stall_into_exactly_one_incident(
    campaign_runs: Path, tmp_path: Path
) -> None:
    res = run(
        campaign_runs,
        *soak_args(
            free_port(),
            "--fault",
            "engine-stall:at=3",
            "--duration",
            "30",
            "-c",
            "3",
            "--stall-after",
            "2",
        ),
        timeout=300,
    )
    camp = only_dir(campaign_runs)
    stalls = injected("injected engine-stall", [camp / "server.log"])
    incidents = incident_dirs(camp)
    assert stalls >= 2, res.stderr
    assert len(incidents) == stalls, res.stderr
    summary = read_json(camp / "summary.json")
    soak = summary["soak"]
    assert soak["incidents"] == stalls
    assert soak["restarts"] >= stalls - 1
    assert soak["hangs_per_hour"]["value"] > 0
    assert soak["hangs_per_1000_requests"]["ci95"][0] > 0
    assert [m["incident"] for m in soak["incident_marks"]] == [p.name for p in incidents]
    found = indices(camp)
    assert len(found) == len(set(found)) == summary["requests"]["finished"]
    # vllm bench serve's result file and the CSV cover the whole soak, every segment.
    assert len(read_json(camp / "bench_result.json")["ttfts"]) == summary["requests"]["finished"]
    assert (camp / "requests.csv").read_text().count("\n") == len(found) + 1
    assert res.returncode == 1
    check_report(camp, tmp_path, "Incidents")


def test_soak_killed_with_sigkill_and_resumed_counts_every_request_once(
    campaign_runs: Path,
) -> None:
    port = free_port()
    proc = start(campaign_runs, *soak_args(port, "--duration", "25", "-c", "4"))
    try:
        wait_for(
            lambda: (
                any(campaign_runs.iterdir())
                and (only_dir(campaign_runs) / "requests.jsonl").exists()
                and len(indices(only_dir(campaign_runs))) >= 30
            ),
            timeout=120,
            what="30 finished requests",
        )
        os.kill(proc.pid, signal.SIGKILL)  # harness only: its server lives on in its session
        proc.wait(timeout=30)
    finally:
        stop(proc)
    camp = only_dir(campaign_runs)
    before = (camp / "requests.jsonl").read_bytes()
    complete_before = before[: before.rfind(b"\n") + 1]
    orphan = ProcessRef.from_dict(read_json(camp / "state.json"))
    assert orphan is not None and orphan.alive(), "the killed soak's server should be orphaned"
    elapsed_before = read_json(camp / "soak.json")["elapsed_s"]

    res = run(campaign_runs, "soak", "--resume", camp.name, timeout=300)
    assert res.returncode == 0, res.stderr
    assert not orphan.alive()
    after = (camp / "requests.jsonl").read_bytes()
    # Nothing recorded before the kill was lost or changed...
    assert after.startswith(complete_before)
    # ...and nothing is counted twice: every index once, new ones after the old ones.
    found = indices(camp)
    assert len(found) == len(set(found))
    old = [json.loads(line)["index"] for line in complete_before.splitlines()]
    new = found[len(old) :]
    assert new and min(new) > max(old)
    summary = read_json(camp / "summary.json")
    assert summary["requests"]["finished"] == len(found)
    state = read_json(camp / "soak.json")
    assert state["resumes"] == 1
    assert state["elapsed_s"] >= 25 > elapsed_before
    assert read_json(camp / "campaign.json")["status"] == "done"
    again = run(campaign_runs, "soak", "--resume", camp.name, timeout=60)
    assert again.returncode == 2 and "already finished" in again.stderr


def test_compare_on_the_simulator_tests_cells_and_searches_the_slo(
    campaign_runs: Path, tmp_path: Path
) -> None:
    res = run(
        campaign_runs,
        "compare",
        "--engine",
        "sim",
        "--model",
        "sim",
        "--tp",
        "1,2",
        "--repeats",
        "2",
        "--requests",
        "40",
        "-c",
        "4",
        "--max-tokens",
        "24",
        "--port",
        str(free_port()),
        "--max-rate-under-slo",
        "ttft=400ms",
        "--slo-probes",
        "3",
        "--slo-probe-seconds",
        "3",
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    camp = only_dir(campaign_runs)
    summary = read_json(camp / "summary.json")
    cells = summary["compare"]["cells"]
    assert [c["label"] for c in cells] == ["tp1", "tp2"]
    for cell in cells:
        assert cell["repeats"] == 2
        assert cell["requests"]["completed"] == 80
        assert cell["throughput"]["output_tokens_per_s"]["n"] == 2
    (comparison,) = summary["compare"]["comparisons"]
    tests = {d["metric"]: d for d in comparison["differences"]}
    assert tests["ttft_ms"]["test"] == "mann-whitney-u"
    assert tests["output_tokens_per_s"]["test"] == "welch-t"  # two repeats
    assert all(d["verdict"] in ("significant", "noise", "n/a") for d in tests.values())
    searched = summary["slo_search"]
    assert set(searched) == {"sim-tp1-default", "sim-tp2-default"}
    assert all(1 <= len(s["probes"]) <= 3 for s in searched.values())
    # Every cell-repeat keeps the files `harness load` writes.
    lines = list(iter_jsonl(camp / "cells.jsonl"))
    assert [(c["label"], c["repeat"]) for c in lines] == [
        ("tp1", 1),
        ("tp2", 1),
        ("tp1", 2),
        ("tp2", 2),
    ]
    for line in lines:
        cell_dir = camp / line["run_dir"]
        for name in (
            "launch_spec.json",
            "server.log",
            "requests.jsonl",
            "summary.json",
            "bench_result.json",
            "requests.csv",
        ):
            assert (cell_dir / name).exists(), name
        bench = read_json(cell_dir / "bench_result.json")
        assert bench["completed"] == 40 and len(bench["ttfts"]) == 40
        assert line["overhead"]["healthy_to_first_request_s"] is not None
        assert line["overhead"]["last_request_to_stopped_s"] is not None
    # Identical seeded workload in every cell: the same prompts in the same order.
    bodies: list[list[Any]] = []
    for line in lines[:2]:
        recs = sorted(
            iter_jsonl(camp / line["run_dir"] / "requests.jsonl"), key=lambda r: r["index"]
        )
        bodies.append([(r["index"], r["prompt_tokens_planned"], r["max_tokens"]) for r in recs])
    assert bodies[0] == bodies[1]
    check_report(camp, tmp_path, "tp1", "tp2", "Highest rate under the SLO")


def test_interrupted_compare_stops_its_server_and_still_reports(campaign_runs: Path) -> None:
    proc = start(
        campaign_runs,
        "compare",
        "--engine",
        "sim",
        "--model",
        "sim",
        "--tp",
        "1,2",
        "--duration",
        "120",
        "-c",
        "2",
        "--port",
        str(free_port()),
    )
    try:
        wait_for(
            lambda: (
                any(campaign_runs.iterdir())
                and any(only_dir(campaign_runs).glob("cells/*/r1/requests.jsonl"))
            ),
            timeout=120,
            what="the first cell's load",
        )
        proc.send_signal(signal.SIGINT)
        res = finish(proc, timeout=120)
    finally:
        stop(proc)
    camp = only_dir(campaign_runs)
    assert res.returncode == 130, res.stderr
    assert read_json(camp / "campaign.json")["status"] == "interrupted"
    (state_file,) = camp.glob("cells/*/r1/state.json")
    assert not ProcessRef.from_dict(read_json(state_file)).alive()  # type: ignore[union-attr]
    assert (camp / "report.html").exists()
    assert read_json(camp / "summary.json")["campaign"]["status"] == "interrupted"


@pytest.mark.parametrize(
    "args, message",
    [
        (["compare", "--model", "sim", "--engine", "sim", "--tp", "", "--requests", "5"], "--tp"),
        (["compare", "--model", "sim", "--engine", "sim", "--tp", "1,0", "--requests", "5"], "'0'"),
        (
            [
                "compare",
                "--model",
                "sim",
                "--engine",
                "sim",
                "--profile",
                "nope",
                "--requests",
                "5",
            ],
            "nope",
        ),
        (
            ["compare", "--model", "sim", "--engine", "sim", "--repeats", "0", "--requests", "5"],
            "repeats",
        ),
        (["compare", "--model", "sim", "--engine", "sim"], "--requests"),
        (["repro-startup", "--model", "sim", "--engine", "sim", "--runs", "0"], "--runs"),
        (["soak", "--model", "sim", "--engine", "sim", "-c", "1"], "--duration"),
        (["soak", "--resume", "no-such-run"], "no-such-run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_anything_starts(
    campaign_runs: Path, args: list[str], message: str
) -> None:
    res = run(campaign_runs, *args, timeout=60)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not any(campaign_runs.iterdir()), "nothing may be created on bad input"


def test_resume_of_a_run_that_is_not_a_soak_is_refused(campaign_runs: Path) -> None:
    res = run(
        campaign_runs,
        "repro-startup",
        "--engine",
        "sim",
        "--model",
        "sim",
        "--runs",
        "1",
        "--port",
        str(free_port()),
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    camp = only_dir(campaign_runs)
    again = run(campaign_runs, "soak", "--resume", camp.name, timeout=60)
    assert again.returncode == 2
    assert "repro-startup campaign, not a soak" in again.stderr


def test_soak_stopped_with_ctrl_c_reports_and_can_go_on(campaign_runs: Path) -> None:
    proc = start(campaign_runs, *soak_args(free_port(), "--duration", "20", "-c", "2"))
    try:
        wait_for(
            lambda: (
                any(campaign_runs.iterdir())
                and (only_dir(campaign_runs) / "requests.jsonl").exists()
                and len(indices(only_dir(campaign_runs))) >= 10
            ),
            timeout=120,
            what="10 finished requests",
        )
        proc.send_signal(signal.SIGINT)
        res = finish(proc, timeout=120)
    finally:
        stop(proc)
    camp = only_dir(campaign_runs)
    assert res.returncode == 130, res.stderr
    assert f"harness soak --resume {camp.name}" in res.stderr
    assert read_json(camp / "campaign.json")["status"] == "interrupted"
    assert (camp / "report.html").exists()
    assert not ProcessRef.from_dict(read_json(camp / "state.json")).alive()  # type: ignore[union-attr]
    interrupted_at = read_json(camp / "soak.json")["elapsed_s"]
    assert interrupted_at < 20
    res = run(campaign_runs, "soak", "--resume", camp.name, timeout=120)
    assert res.returncode == 0, res.stderr
    found = indices(camp)
    assert len(found) == len(set(found))
    assert read_json(camp / "soak.json")["elapsed_s"] >= 20

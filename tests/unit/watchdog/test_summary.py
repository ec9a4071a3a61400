from __future__ import annotations

from harness.watchdog.rules import GpuSample, Verdict
from harness.watchdog.summary import (
    ProcessReport,
    odd_one_out,
    processes_table,
    render_summary,
    role_name,
    where_line,
)


def test_role_names() -> None:
    # An inline program spans lines; a role must stay on one line of summary.md.
    assert role_name("python3", ["python3", "-c", "import time\ndef f(): pass"]) == "python3 -c"
    assert role_name("VLLM::Worker_TP", ["VLLM::Worker_TP1"]) == "Worker_TP1"
    assert role_name("VLLM::EngineCore", ["VLLM::EngineCore"]) == "EngineCore"
    api = ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "m"]
    assert role_name("python", api) == "APIServer"
    env = {"RANK": "3", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "x"}
    assert role_name("python", ["python", "-u", "train.py"], env) == "rank3"
    assert role_name("python", ["python", "-m", "torch.distributed.run", "x.py"]) == "torchrun"
    assert role_name("python3", ["python3", "-u", "/a/b/train.py"]) == "python3 train.py"
    assert role_name("sh", ["/bin/sh", "-c", "x"]) == "sh"


def _vllm(stopped: bool) -> list[ProcessReport]:
    return [
        ProcessReport(1, "APIServer", "S", 0.0, wait="the event loop", wait_category="event-loop"),
        ProcessReport(2, "EngineCore", "S", 0.0, wait="collective_rpc", wait_category="rpc"),
        ProcessReport(3, "Worker_TP0", "S", 1.0, wait="all_reduce", wait_category="collective"),
        ProcessReport(
            4,
            "Worker_TP1",
            "T" if stopped else "S",
            0.0,
            wait="all_reduce",
            wait_category="collective",
        ),
    ]


def test_stopped_worker_is_the_odd_one_and_leads_the_line() -> None:
    procs = _vllm(stopped=True)
    odd = odd_one_out(procs)
    assert odd is not None and odd.pid == 4 and "stopped (state T)" in odd.reason
    line = where_line(procs, odd)
    assert line.startswith("Worker_TP1 stopped (state T); ")
    assert "Worker_TP0 waits in all_reduce" in line
    assert "EngineCore waits in collective_rpc" in line


def test_rank_outside_the_collective_is_the_odd_one() -> None:
    procs = [
        ProcessReport(10, "torchrun", "S", 0.0, wait="_invoke_run", wait_category="other"),
        ProcessReport(11, "rank0", "S", 0.0, wait="all_reduce", wait_category="collective"),
        ProcessReport(12, "rank1", "S", 0.0, wait="load_batch (wait)", wait_category="queue"),
    ]
    odd = odd_one_out(procs)
    assert odd is not None and odd.pid == 12 and "all_reduce" in odd.reason


def test_spinner_and_gpu_imbalance() -> None:
    procs = [
        ProcessReport(1, "rank0", "R", 100.0),
        ProcessReport(2, "rank1", "S", 0.0),
        ProcessReport(3, "rank2", "S", 1.0),
    ]
    odd = odd_one_out(procs)
    assert odd is not None and odd.pid == 1 and "spins" in odd.reason
    calm = [ProcessReport(1, "rank0", "S", 1.0), ProcessReport(2, "rank1", "S", 1.0)]
    odd = odd_one_out(calm, [GpuSample(0, 100.0), GpuSample(1, 0.0)])
    assert odd is not None and odd.label == "GPU 0"
    assert odd_one_out(calm) is None


def test_summary_first_lines_and_table() -> None:
    procs = _vllm(stopped=True)
    v = Verdict("engine-stall", "canary", "no token in 20 s")
    text = render_summary(
        verdict=v,
        detected_at="2026-01-01 00:00:00 UTC",
        processes=procs,
        odd=odd_one_out(procs),
        files=["stacks/1.txt"],
    )
    first, second = text.splitlines()[:2]
    assert first.startswith("engine-stall (canary) detected at 2026-01-01 00:00:00 UTC")
    assert second.startswith("Worker_TP1 stopped (state T)")
    assert "| Worker_TP1 | 4 | T (stopped)" in text
    table = processes_table(procs)
    assert table.splitlines()[0].startswith("PID")
    multi = processes_table([ProcessReport(5, "rank0", "S", host="node-5")])
    assert multi.splitlines()[1].startswith("node-5  5")


def test_simulator_process_titles() -> None:
    assert role_name("python", ["sim::Worker_TP1"]) == "Worker_TP1"


def test_where_line_from_real_simulated_tp_stacks() -> None:
    # The bug: "Worker_TP0 waits in execute_model" while its own stack was in all_reduce.
    from pathlib import Path

    from harness.watchdog.stacks import parse_dump, process_wait

    fix = Path(__file__).resolve().parents[2] / "fixtures" / "pyspy"
    procs = []
    for pid, role, name in (
        (10, "Worker_TP0", "sim_worker_tp0_all_reduce.txt"),
        (11, "Worker_TP1", "sim_worker_tp1_stuck.txt"),
    ):
        w = process_wait(parse_dump((fix / name).read_text()))
        assert w is not None
        procs.append(
            ProcessReport(pid, role, "S", 0.0, wait=w.label, wait_category=w.category, moved=False)
        )
    line = where_line(procs, odd_one_out(procs))
    assert line == (
        "Worker_TP1 is not in the collective (in stuck_in_kernel; peers wait in all_reduce); "
        "Worker_TP0 waits in all_reduce"
    )


def test_summary_line_three_names_the_likely_signature_and_lists_every_match() -> None:
    procs = _vllm(stopped=True)
    v = Verdict("engine-stall", "canary", "no token in 20 s")
    base = {"verdict": v, "detected_at": "x", "processes": procs, "odd": odd_one_out(procs)}
    assert render_summary(**base).splitlines()[2] == "no known signature matched"  # type: ignore[arg-type]
    match = {
        "name": "odd-rank-out",
        "cause": "Worker_TP1 stopped (state T) while its peers wait",
        "next_step": "kill -CONT PID",
        "links": ["https://example.org/x"],
        "evidence": ["Worker_TP1 stopped (state T)", "Worker_TP0 (pid 3) waits in all_reduce"],
    }
    likely = f"likely: odd-rank-out — {match['cause']}; try: {match['next_step']}"
    text = render_summary(
        **base,  # type: ignore[arg-type]
        likely=likely,
        signatures=[match],
        sections=["## Flight recorder", "", "x_*: missing ranks: ...", ""],
    )
    lines = text.splitlines()
    assert lines[2] == likely and lines[3] == ""
    assert "## Known signatures that match" in lines
    assert "  - `Worker_TP0 (pid 3) waits in all_reduce`" in lines
    assert "  - see https://example.org/x" in lines
    assert lines.index("## Flight recorder") > lines.index("## Known signatures that match")

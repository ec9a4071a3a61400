"""Multi-node dumps: command construction and the merge (ssh/srun cannot run here)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from harness.errors import BadInput
from harness.watchdog.remote import capture_remote, parse_node_output, split_prefixed
from harness.watchdog.remotecmd import (
    MARK,
    pdsh_command,
    remote_script,
    rsh_command,
    srun_command,
    ssh_command,
)

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "pyspy"


def node_text(host: str, pids_files: dict[int, str], states: dict[int, str]) -> str:
    lines = [f"{MARK}host {host}", f"{MARK}ps"]
    for pid, state in states.items():
        args = "VLLM::Worker_TP0" if pid % 2 == 0 else "VLLM::Worker_TP1"
        lines.append(f"{pid:>7} 1 {state}l 0.0 48 {args}")
    lines.append(f"{MARK}pids " + " ".join(str(p) for p in pids_files))
    for pid, fname in pids_files.items():
        for r in (1, 2):
            lines.append(f"{MARK}stack {pid} {r}")
            lines.append((FIX / fname).read_text())
    lines.append(f"{MARK}end")
    return "\n".join(lines) + "\n"


def test_script_is_valid_sh_and_quotes_arguments() -> None:
    script = remote_script(match="python|VLLM::", py_spy="/opt/my env/py-spy", gap_s=1.5)
    assert "'/opt/my env/py-spy'" in script and "'python|VLLM::'" in script
    assert "sleep 1.5" in script and "--native" in script and "--nonblocking" in script
    subprocess.run(["sh", "-n", "-c", script], check=True)


def test_ssh_pdsh_srun_commands() -> None:
    script = "echo hi"
    argv = ssh_command("node-5", script)
    assert argv[0] == "ssh" and "BatchMode=yes" in argv and argv[-2] == "node-5"
    assert shlex.split(argv[-1]) == ["sh", "-c", "echo hi"]
    assert pdsh_command(["n5", "n8"], script)[:4] == ["pdsh", "-S", "-w", "n5,n8"]
    srun = srun_command("2180718", script, nodes=40)
    assert srun[:4] == ["srun", "--jobid=2180718", "--overlap", "--gres=gpu:0"]
    assert "--nodes=40" in srun and "--label" in srun and srun[-3:] == ["sh", "-c", script]
    with pytest.raises(BadInput):
        srun_command("123; rm -rf /", script)


def test_split_prefixed_pdsh_and_srun_label() -> None:
    text = "n5: a\nn8: b\nn5: c\n0: x\n"
    parts = split_prefixed(text)
    assert parts["n5"] == "a\nc\n" and parts["n8"] == "b\n" and parts["0"] == "x\n"


def test_parse_node_output() -> None:
    node = parse_node_output(
        node_text("node-5", {100: "vllm_worker_tp0_all_reduce.txt"}, {100: "S"})
    )
    assert node.host == "node-5" and node.complete and node.pids == [100]
    assert node.procs[100].state == "S" and node.procs[100].threads == 48
    assert len(node.stacks[100]) == 2 and "all_reduce" in node.stacks[100][0]


def test_merge_names_the_node_in_every_process_line(tmp_path: Path) -> None:
    n5 = parse_node_output(node_text("node-5", {100: "vllm_worker_tp0_all_reduce.txt"}, {100: "S"}))
    n8 = parse_node_output(node_text("node-8", {101: "vllm_worker_tp0_all_reduce.txt"}, {101: "T"}))
    out = capture_remote(tmp_path / "b", [n5, n8])
    lines = (out / "processes.txt").read_text().splitlines()
    assert lines[0].startswith("NODE")
    assert lines[1].startswith("node-5") and lines[2].startswith("node-8")
    assert (out / "stacks" / "node-5-100.txt").exists()
    assert (out / "stacks" / "node-8-101.txt").exists()
    summary = (out / "summary.md").read_text().splitlines()
    assert summary[1].startswith("Worker_TP1@node-8 stopped (state T)")
    assert "Worker_TP0@node-5 waits in all_reduce" in summary[1]


def test_pdsh_messages_about_a_node_are_filed_under_it() -> None:
    text = "n5: #harness-host n5\npdsh@login: n8: ssh: connect to host n8 port 22: refused\n"
    parts = split_prefixed(text)
    assert parts == {"n5": "#harness-host n5\n", "n8": "ssh: connect to host n8 port 22: refused\n"}


def test_rsh_template() -> None:
    argv = rsh_command(["docker", "exec", "{host}"], "c1", "echo hi")
    assert argv == ["docker", "exec", "c1", "sh", "-c", "echo hi"]
    with pytest.raises(BadInput, match="placeholder"):
        rsh_command(["docker", "exec"], "c1", "echo hi")


def test_a_node_that_answered_and_one_that_did_not() -> None:
    answered = parse_node_output(f"{MARK}host n5\n{MARK}ps\n", "n5")
    assert answered.answered and not answered.complete
    silent = parse_node_output("ssh: Could not resolve hostname n8\n", "n8")
    assert not silent.answered and silent.host == "n8"


def test_script_lists_every_pid_on_one_line() -> None:
    # PIDS holds one pid per line; the marker line must carry all of them.
    script = remote_script(match="x")
    assert 'echo "#harness-pids" $PIDS' in script

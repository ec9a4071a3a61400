"""``harness dump --hosts``: the real remote script, run with ``sh`` against real processes.

No ssh server is needed: the nodes are reached through stand-ins for the remote shell
(``--rsh 'sh fake_node.sh {host}'``) and for pdsh (a ``pdsh`` script first on PATH), which run
the real dump script here for a healthy "host" and a deliberately slow command for a host that
stops answering. Real ssh is used where it fails on its own (an unresolvable host).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from harness.watchdog.probes import run_command as capture_run
from harness.watchdog.subproc import run_with_deadline
from tests.conftest import REPO, require
from tests.integration.harnesscli import first_line, run, spawn

pytestmark = pytest.mark.integration

FIXTURES = REPO / "tests" / "fixtures" / "remote"
SLEEPER = (
    "import sys, time\n"
    "def sleeper():\n"
    "    print('ready', flush=True)\n"
    "    time.sleep(900)\n"
    "sleeper()\n"
)


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    require(Path(found).exists(), "py-spy")
    return found


@pytest.fixture
def sleepers() -> tuple[str, list[int]]:
    """Two Python processes whose command lines carry a unique marker, ready (in sleeper());
    (match regex, pids). Stopped by the process_trees fixture."""
    marker = f"harness-remote-{uuid.uuid4().hex[:12]}"
    procs = [spawn([sys.executable, "-c", SLEEPER, marker], stderr=None) for _ in range(2)]
    for p in procs:
        assert first_line(p) == "ready"
    # "[r]": the regex does not match its own text in harness dump's command line.
    return marker[:-1] + f"[{marker[-1]}]", [p.pid for p in procs]


def _dump(
    args: list[str], runs: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run(runs, "dump", *args, timeout=300, env=env)


def _gone(pid: int, deadline_s: float = 10.0) -> bool:
    """Whether ``pid`` exits (or is a zombie) within the deadline: a SIGKILL is asynchronous."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_a_timed_out_command_keeps_its_output_and_its_children_die() -> None:
    done = run_with_deadline(["sh", "-c", "sleep 300 & echo child $!; echo partial; wait"], 1)
    assert done.timed_out and done.returncode is None
    assert "partial" in done.output, done.output
    child = int(done.output.split("child ", 1)[1].split()[0])
    assert _gone(child), "the command's child outlived the deadline"


def test_py_spy_runner_keeps_partial_output_on_timeout() -> None:
    rc, out = capture_run(["sh", "-c", "echo 'Thread 1 (idle)'; exec sleep 300"], 1)
    assert rc is None and "Thread 1 (idle)" in out and "timed out after 1 s" in out


def test_pdsh_with_one_slow_node_keeps_the_other_nodes_stacks(
    sleepers: tuple[str, list[int]], tmp_path: Path
) -> None:
    match, pids = sleepers
    path = f"{FIXTURES}{os.pathsep}{os.environ.get('PATH', '')}"
    out = _dump(
        [
            "--hosts",
            "nodea,slow1",
            "--match",
            match,
            "--remote-py-spy",
            _py_spy(),
            "--gap",
            "0.5",
            "--host-timeout",
            "20",
        ],
        tmp_path / "runs",
        env={"PATH": path},
    )
    assert out.returncode == 0, out.stderr
    assert "node slow1: no answer within 20 s" in out.stderr
    bundle = Path(out.stdout.strip().splitlines()[-1])
    incident = json.loads((bundle / "incident.json").read_text())
    assert incident["nodes"] == ["nodea", "slow1"]
    procs = {(p["host"], p["pid"]): p for p in incident["processes"]}
    for pid in pids:
        proc = procs[("nodea", pid)]
        assert proc["wait"].startswith("sleeper"), proc
        stack = (bundle / "stacks" / f"nodea-{pid}.txt").read_text()
        assert stack.count("Thread ") == 2, stack  # both dumps of the healthy node survived
    assert any("node slow1: incomplete output" in n for n in incident["notes"])


def test_rsh_nodes_slow_and_unreachable_are_named(
    sleepers: tuple[str, list[int]], tmp_path: Path
) -> None:
    match, pids = sleepers
    out = _dump(
        [
            "--hosts",
            "nodea,slow1,down1",
            "--rsh",
            f"sh {FIXTURES / 'fake_node.sh'} {{host}}",
            "--match",
            match,
            "--remote-py-spy",
            _py_spy(),
            "--gap",
            "0.5",
            "--host-timeout",
            "20",
        ],
        tmp_path / "runs",
    )
    assert out.returncode == 0, out.stderr
    assert "node slow1: no answer within 20 s (what it printed before is kept)" in out.stderr
    assert "node down1: exit 255: ssh: connect to host down1 port 22: Connection refused" in (
        out.stderr
    )
    bundle = Path(out.stdout.strip().splitlines()[-1])
    incident = json.loads((bundle / "incident.json").read_text())
    waits = {p["pid"]: p["wait"] for p in incident["processes"] if p["host"] == "nodea"}
    assert set(waits) == set(pids) and all(w.startswith("sleeper") for w in waits.values())
    notes = "\n".join(incident["notes"])
    assert "node down1: no answer" in notes and "node slow1: incomplete output" in notes


def test_no_node_answered_is_exit_3_naming_each_host(tmp_path: Path) -> None:
    out = _dump(
        ["--hosts", "down1,down2", "--rsh", f"sh {FIXTURES / 'fake_node.sh'} {{host}}"],
        tmp_path / "runs",
    )
    assert out.returncode == 3, out.stderr
    assert "no node answered: down1 (exit 255: ssh: connect to host down1" in out.stderr
    assert "down2 (exit 255" in out.stderr
    assert not (tmp_path / "runs").exists()  # nothing recorded for a dump that got nothing


def test_real_ssh_to_an_unresolvable_host_is_exit_3(tmp_path: Path) -> None:
    require(shutil.which("ssh") is not None, "ssh client")
    out = _dump(["--hosts", "no-such-node.invalid"], tmp_path / "runs")
    assert out.returncode == 3, out.stderr
    assert "no-such-node.invalid (exit 255: ssh: Could not resolve hostname" in out.stderr


def test_rsh_without_host_placeholder_is_bad_input(tmp_path: Path) -> None:
    out = _dump(["--hosts", "a", "--rsh", "docker exec"], tmp_path / "runs")
    assert out.returncode == 2 and "no {host} placeholder" in out.stderr

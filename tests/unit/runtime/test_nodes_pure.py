"""What the multi-node runtime sends to each node (pure parts): the launch script (no secret
on a command line, the plan's ulimits, the pid line first), the stop script, the pid line."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.runtime.nodes import PID_MARK, _read_pid, launch_script, stop_script
from tests.unit.test_nodeplan import plan


def test_the_launch_script_exports_the_nodes_environment_and_execs_the_engine() -> None:
    spec = plan(engine_args=("--api-key sk-secret-1",))
    script = launch_script(spec, spec.nodes[1])
    lines = script.splitlines()
    assert "ulimit -s 65536 2>/dev/null || true" in lines  # the default profile's 64 MiB stack
    assert f'echo "{PID_MARK}$$ on $(hostname)"' in lines
    assert "export VLLM_HOST_IP=172.25.0.3" in lines
    assert "export VLLM_API_KEY=sk-secret-1" in lines  # by environment, never in argv
    assert lines[-1].startswith("exec /opt/venv/bin/python3 -c ")
    assert "sk-secret-1" not in lines[-1]


def test_the_launch_script_runs_under_sh(tmp_path: Path) -> None:
    spec = plan(runs_root=str(tmp_path))
    node = spec.nodes[0].model_copy(update={"argv": ["sh", "-c", 'echo "ip=$VLLM_HOST_IP"']})
    done = subprocess.run(
        ["sh", "-s"], input=launch_script(spec, node), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith(PID_MARK) and second == "ip=172.25.0.2"
    log = tmp_path / "server.log"
    log.write_text("ssh noise\n" + done.stdout)
    assert _read_pid(log, 0) == int(first.split()[2])


def test_the_stop_script_escalates_to_sigkill(tmp_path: Path) -> None:
    # A group whose leader ignores SIGTERM: stopped by SIGKILL after the grace.
    leader = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; sleep 300 & echo ready; wait"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert leader.stdout is not None and leader.stdout.readline() == "ready\n"  # trap set
        done = subprocess.run(["sh", "-c", stop_script(leader.pid, 0.5)], timeout=30)
        assert done.returncode == 0
        assert leader.wait(timeout=10) == -9
    finally:
        if leader.poll() is None:
            leader.kill()
    # A group that is gone already: nothing to do, no error.
    assert subprocess.run(["sh", "-c", stop_script(leader.pid, 0.5)]).returncode == 0

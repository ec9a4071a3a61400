"""The local runtime against real processes: groups, escalation, stopped processes, log follow."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from harness.campaign.startup import LogFollower, wait_until_healthy
from harness.engines.base import phase
from harness.rundir import RunDir
from harness.runtime.local import LocalRuntime, local_run_alive, stop_local_run, tail_lines
from harness.spec import Deadlines, LaunchSpec
from tests.conftest import free_port
from tests.integration.harnesscli import wait_for

# A server that ignores SIGTERM and has a child that ignores it too: only SIGKILL ends them.
STUBBORN = r"""
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('child up', flush=True); time.sleep(600)"])
print("Loading weights", flush=True)
print("Application startup complete.", flush=True)
time.sleep(600)
"""


def spec_for(tmp: Path, code: str, *, port: int, grace: float = 1.0) -> LaunchSpec:
    return LaunchSpec(
        run_id="r1",
        run_dir=str(tmp),
        engine="sim",
        model="m",
        tp=1,
        profiles=["default"],
        runtime="local",
        host="127.0.0.1",
        port=port,
        argv=[sys.executable, "-c", code],
        env={"PYTHONUNBUFFERED": "1"},
        health_url=f"http://127.0.0.1:{port}/health",
        base_url=f"http://127.0.0.1:{port}",
        served_model_name="m",
        deadlines=Deadlines(stop_grace_s=grace),
        rlimits={"core": -1},
    )


def _both_up(run: RunDir) -> bool:
    """The stubborn server and its child ignore SIGTERM from here on (they said so)."""
    log = run.server_log.read_text() if run.server_log.exists() else ""
    return "child up" in log and "Application startup complete." in log


def test_stop_escalates_to_sigkill_for_the_whole_group(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    handle = LocalRuntime().start(spec_for(tmp_path, STUBBORN, port=free_port()), run)
    try:
        wait_for(lambda: _both_up(run), 30, "the server and its child")
        pids = handle.pids()
        assert len(pids) == 2
        assert os.getpgid(pids[0]) == pids[0], "the server leads its own process group"
        # A stopped member must not survive either.
        os.kill(pids[1], signal.SIGSTOP)
        code = handle.stop()
        # Both ignore SIGTERM: only the escalation to SIGKILL ends them (no timing involved).
        assert code == -signal.SIGKILL
        assert not [
            p
            for p in pids
            if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        assert handle.poll() == -signal.SIGKILL
    finally:
        handle.stop(grace_s=0)


def test_rlimits_applied_to_the_server(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    code = "import resource; print('core', resource.getrlimit(resource.RLIMIT_CORE)[0], flush=True)"
    handle = LocalRuntime().start(spec_for(tmp_path, code, port=free_port()), run)
    try:
        assert handle._proc is not None
        handle._proc.wait(timeout=30)
    finally:
        handle.stop()
    import resource

    assert f"core {resource.RLIM_INFINITY}" in run.server_log.read_text()


def test_startup_wait_sees_phases_and_exit(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    code = "print('Loading weights', flush=True); import time; time.sleep(1); raise SystemExit(3)"
    handle = LocalRuntime().start(spec_for(tmp_path, code, port=free_port()), run)
    phases = (phase("loading weights", "Loading weights"),)
    seen: list[str] = []
    try:
        result = wait_until_healthy(
            handle, phases, deadline_s=60, on_phase=lambda n, _: seen.append(n)
        )
    finally:
        handle.stop()
    assert result.outcome == "exited" and result.exit_code == 3
    assert seen == ["loading weights"]


def test_startup_deadline_and_log_silence(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    code = "print('hello', flush=True); import time; time.sleep(600)"
    handle = LocalRuntime().start(spec_for(tmp_path, code, port=free_port()), run)
    try:
        result = wait_until_healthy(handle, (), deadline_s=2)
        assert result.outcome == "timeout"
        result = wait_until_healthy(handle, (), deadline_s=60, log_silence_s=1.5)
        assert result.outcome == "log-silence"
        assert result.last_log_line_age_s is not None and result.last_log_line_age_s >= 1.5
    finally:
        handle.stop()


def test_healthy_when_health_answers(tmp_path: Path) -> None:
    port = free_port()
    code = (
        "import http.server\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers()\n"
        "    def log_message(self, *a): pass\n"
        "print('Application startup complete.', flush=True)\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    )
    run = RunDir(tmp_path).create()
    handle = LocalRuntime().start(spec_for(tmp_path, code, port=port), run)
    try:
        result = wait_until_healthy(handle, (phase("ready", "startup complete"),), deadline_s=60)
        assert result.healthy and [n for n, _ in result.phases] == ["ready"]
    finally:
        handle.stop()


def test_down_stops_a_run_started_elsewhere(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    handle = LocalRuntime().start(spec_for(tmp_path, STUBBORN, port=free_port()), run)
    try:
        wait_for(lambda: _both_up(run), 30, "the server and its child")
        state = run.read_state()
        assert local_run_alive(state)
        assert stop_local_run(run, grace_s=1)
        assert not local_run_alive(run.read_state())
        assert run.read_state()["status"] == "stopped"
        assert not stop_local_run(run)
    finally:
        handle.stop()


def test_port_busy_is_an_environment_problem(tmp_path: Path) -> None:
    import socket

    from harness.errors import PortInUse

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is already in use"):
            LocalRuntime().start(spec_for(tmp_path, "pass", port=port), RunDir(tmp_path).create())


def test_log_follower_and_tail(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    follower = LogFollower(log)
    assert follower.new_lines() == []
    log.write_bytes(b"one\ntw")
    assert follower.new_lines() == ["one"]
    with open(log, "ab") as fh:
        fh.write(b"o\nthree\n")
    assert follower.new_lines() == ["two", "three"]
    assert tail_lines(log, 2) == ["two", "three"]

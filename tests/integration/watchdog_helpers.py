"""Helpers for the watchdog's integration tests: a real vLLM TP=2 server started directly.

Until ``harness serve`` can be used from these tests, :class:`DirectServer` starts the real
vLLM CPU server in its own process group and implements the ``ServerHandle`` protocol over it
(no fake: every process is the real engine's).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from harness.rundir import RunDir, new_run_id
from harness.spec import LaunchSpec


def kill_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> int | None:
    """SIGTERM the process group, then SIGKILL it and every descendant after ``grace_s``."""
    try:
        family = [proc.pid, *[c.pid for c in psutil.Process(proc.pid).children(recursive=True)]]
    except psutil.Error:
        family = [proc.pid]
    for sig in (signal.SIGCONT, signal.SIGTERM):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for pid in family:  # a stopped child must be continued to see SIGTERM
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    for pid in family:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        return None


class DirectServer:
    """The real vLLM CPU server at TP=2 in its own process group, as a ServerHandle."""

    def __init__(self, model: Path, runs_dir: Path, port: int, tp: int = 2) -> None:
        run_id = new_run_id("vllm-tp2")
        self.run = RunDir(runs_dir / run_id).create()
        argv = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--tensor-parallel-size",
            str(tp),
            "--distributed-executor-backend",
            "mp",
            "--enforce-eager",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0|1"}
        base = f"http://127.0.0.1:{port}"
        self.spec = LaunchSpec(
            run_id=run_id,
            run_dir=str(self.run.path),
            engine="vllm",
            model=str(model),
            tp=tp,
            profiles=["default"],
            runtime="local",
            host="127.0.0.1",
            port=port,
            argv=argv,
            env=env,
            health_url=base + "/health",
            base_url=base,
            served_model_name=str(model),
            device="cpu",
        )
        self.run.launch_spec.write_text(self.spec.to_json())
        self._log = open(self.run.server_log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_healthy(self, deadline_s: float = 400.0) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with {self.proc.returncode}; see {self.run.server_log}"
                )
            try:
                if httpx.get(self.spec.health_url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"vLLM not healthy after {deadline_s} s; see {self.run.server_log}")

    def warm_up(self) -> None:
        """The first request compiles kernels (minutes on a busy 2-core box): do it first."""
        r = httpx.post(
            self.spec.base_url + "/v1/completions",
            timeout=600,
            json={"model": self.spec.served_model_name, "prompt": "hello", "max_tokens": 4},
        )
        r.raise_for_status()

    def root_pid(self) -> int | None:
        return self.proc.pid

    def pids(self) -> list[int]:
        try:
            p = psutil.Process(self.proc.pid)
            return [p.pid, *[c.pid for c in p.children(recursive=True)]]
        except psutil.Error:
            return []

    def worker(self, name: str) -> int:
        for pid in self.pids():
            try:
                if name in " ".join(psutil.Process(pid).cmdline()):
                    return pid
            except psutil.Error:
                continue
        raise LookupError(name)

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self, grace_s: float | None = None) -> int | None:
        code = kill_group(self.proc, grace_s or 10.0)
        self._log.close()
        return code

    def describe(self) -> str:
        return f"vLLM TP=2 pid {self.proc.pid}"

"""Helpers shared by the load benchmarks: start servers, run both clients, read their results."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

PY = sys.executable
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def taskset(core: str | None) -> list[str]:
    return ["taskset", "-c", core] if core is not None and shutil.which("taskset") else []


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(
    argv: list[str],
    health: str,
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    deadline_s: float = 900,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` in its own process group, wait for ``health``; kill the group at the end."""
    out = open(log or os.devnull, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    try:
        end = time.monotonic() + deadline_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {argv}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health, timeout=2).status_code == 200:
                    break
            if time.monotonic() > end:
                raise RuntimeError("server never became healthy")
            time.sleep(0.5)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.close()


def tiny_model(dest: Path) -> Path:
    if not (dest / "config.json").exists():
        subprocess.run(
            [PY, "-m", "harness", "tiny-model", str(dest)], check=True, stdout=subprocess.DEVNULL
        )
    return dest


def harness_load(url: str, args: list[str], core: str | None = None) -> dict[str, Any]:
    """Run ``harness load`` and return its summary.json (plus the command)."""
    with tempfile.TemporaryDirectory() as runs:
        cmd = [
            *taskset(core),
            PY,
            "-m",
            "harness",
            "load",
            "--url",
            url,
            "--runs-dir",
            runs,
            "--no-progress",
            "--no-itl",
            *args,
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        (run,) = Path(runs).iterdir()
        summary: dict[str, Any] = json.loads((run / "summary.json").read_text())
        summary["_lines"] = sum(1 for _ in (run / "requests.jsonl").open())
    summary["_cmd"] = " ".join(cmd)
    return summary


def vllm_bench(url: str, args: list[str], core: str | None = None) -> dict[str, Any]:
    """Run ``vllm bench serve`` (through benchmarks/load_vllm_bench.py); return its result JSON."""
    with tempfile.TemporaryDirectory() as d:
        cmd = [
            *taskset(core),
            PY,
            str(HERE / "load_vllm_bench.py"),
            "--base-url",
            url,
            "--save-result",
            "--result-dir",
            d,
            "--result-filename",
            "r.json",
            "--disable-tqdm",
            *args,
        ]
        subprocess.run(
            cmd,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"},
        )
        result: dict[str, Any] = json.loads((Path(d) / "r.json").read_text())
    result["_cmd"] = " ".join(cmd)
    return result


def median(values: list[float]) -> float:
    return float(statistics.median(values))

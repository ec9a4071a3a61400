"""Servers in integration tests: the one health wait, the simulator and the real vLLM CPU server
started directly (without harness), each stopped with its whole process tree."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.harnesscli import spawn, stop


def _tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def answers(url: str) -> bool:
    """Whether GET ``url`` answers 200 now."""
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(
    url: str,
    timeout: float,
    *,
    proc: subprocess.Popen[Any] | None = None,
    alive: Callable[[], bool] | None = None,
    log: Path | None = None,
) -> float:
    """Poll ``url`` (GET) until it answers 200; the seconds it took. Fails at ``timeout``, or
    as soon as ``proc`` exits or ``alive()`` turns false, with the tail of ``log``."""
    start = time.monotonic()
    while True:
        if answers(url):
            return time.monotonic() - start
        if proc is not None and proc.poll() is not None:
            pytest.fail(
                f"{proc.args} exited with {proc.returncode} before {url} answered\n{_tail(log)}"
            )
        if alive is not None and not alive():
            pytest.fail(f"the server behind {url} is gone\n{_tail(log)}")
        if time.monotonic() - start > timeout:
            pytest.fail(f"{url} not healthy after {timeout:.0f} s\n{_tail(log)}")
        time.sleep(0.2)


@contextmanager
def sim_server(
    *args: str, wait_ready: bool = True, log: Path | None = None, outlives_test: bool = False
) -> Iterator[tuple[str, subprocess.Popen[Any]]]:
    """``harness sim ARGS`` on a free port (0.1 s start-up): (base URL, process), healthy
    unless ``wait_ready`` is false; stopped with its workers on the way out (``outlives_test``:
    for a module-scoped fixture, see ``harnesscli.spawn``)."""
    port = free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    argv = [sys.executable, "-m", "harness", "sim", "--port", str(port), "--startup-s", "0.1"]
    try:
        proc = spawn(
            [*argv, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=False,
            outlives_test=outlives_test,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            if wait_ready:
                wait_healthy(url + "/health", 60, proc=proc, log=log)
            yield url, proc
        finally:
            stop(proc, grace_s=2)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


@contextmanager
def vllm_server(
    model: Path, log: Path, *args: str, env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[Any]]]:
    """The real vLLM CPU server (``python -m vllm.entrypoints.openai.api_server``, eager, one
    KV-cache GiB) on a free port, healthy: (base URL, process); stopped with its workers."""
    port = free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), *args]  # fmt: skip
    with open(log, "wb") as out:
        proc = spawn(
            argv,
            env={"VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=False,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url + "/health", 600, proc=proc, log=log)
            yield url, proc
        finally:
            stop(proc, grace_s=30)

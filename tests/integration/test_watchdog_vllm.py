"""The real hang: vLLM CPU at TP=2 under ``harness serve``, one TP worker stopped mid-stream.

The watchdog's incident names the stopped worker and a known signature (line 3 of summary.md);
the worker stays stopped until vLLM complains (``No available shared memory broadcast block
found in 60 seconds``), and ``harness dump`` of the same server then names the shared-memory
broadcast signature and the stopped worker. Also checks that secrets from the environment never
reach ``runs/`` (grep every file). One module-scoped server; always killed in teardown (process
group, SIGKILL escalation).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port, have_module, require
from tests.integration.bundles import py_spy_stacks
from tests.integration.harnesscli import (
    harness_argv,
    only_dir,
    run,
    spawn,
    stop,
    stop_all_under,
    wait_for,
)
from tests.integration.servers import wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRETS = {"HF_TOKEN": "hf_watchdogtestsecret0123", "MY_SERVICE_PASSWORD": "pw-Zx81-secret"}


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    runs: Path
    base_url: str
    model: str

    def run_dir(self) -> Path:
        return only_dir(self.runs)

    def worker(self, name: str) -> int:
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if name in " ".join(p.cmdline()):
                    return p.pid
            except psutil.Error:
                continue
        raise LookupError(name)


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require(have_module("vllm"), "vLLM (CPU build)")
    runs = tmp_path_factory.mktemp("vllm-watch") / "runs"
    port = free_port()
    log = runs.parent / "serve.out"
    with open(log, "wb") as out:
        # Output into a file: the server runs for minutes, a pipe nobody reads would fill.
        proc = spawn(
            harness_argv(
                runs, "serve", "--engine", "vllm", "--model", str(tiny_model_dir), "--tp", "2",
                "--runtime", "local", "--profile", "default,eager", "--port", str(port),
                "--stall-after", "20",
            ),
            env=SECRETS,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=False,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base + "/health", 600, proc=proc, log=log)
        model = httpx.get(base + "/v1/models", timeout=30).json()["data"][0]["id"]
        # The first request compiles kernels: do it before anything is stopped.
        httpx.post(
            base + "/v1/completions",
            timeout=600,
            json={"model": model, "prompt": "hello", "max_tokens": 4},
        ).raise_for_status()
        yield Served(proc, runs, base, model)
    finally:
        # A module-scoped fixture stops its own: Ctrl-C first (harness serve stops its server
        # group), then the whole tree and anything recorded under runs/.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        stop(proc)
        stop_all_under(runs)


@dataclass
class Stall:
    """Worker_TP1 stopped mid-stream: the watchdog's incident, ``harness dump`` of the same
    hang once vLLM complained, and the stream after ``kill -CONT``."""

    bundle: Path
    later: Path
    tokens_at_cont: int
    tokens_at_end: int
    stream_alive: bool
    errors: list[BaseException]


@pytest.fixture(scope="module")
def stall(served: Served) -> Stall:
    """The hang every test of this module reads (whichever test runs first makes it, once)."""
    tokens: list[float] = []
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with httpx.stream(
                "POST",
                served.base_url + "/v1/completions",
                timeout=300,
                json={
                    "model": served.model,
                    "prompt": "hi",
                    "max_tokens": 900,
                    "ignore_eos": True,
                    "stream": True,
                },
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data:") and "[DONE]" not in line:
                        tokens.append(time.monotonic())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    wait_for(lambda: len(tokens) >= 5 or errors, 120, "5 streamed tokens", interval=0.1)
    assert len(tokens) >= 5, errors
    worker = served.worker("Worker_TP1")
    os.kill(worker, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        summary = served.run_dir() / "incidents" / "1" / "summary.md"
        wait_for(summary.exists, 180, "the watchdog's incident", interval=0.5)
        later = _dump_after_the_engine_complains(served, stopped_at)
    finally:
        os.kill(worker, signal.SIGCONT)
    # kill -CONT: tokens flow again and the stream finishes.
    n = len(tokens)
    t.join(timeout=240)
    return Stall(summary.parent, later, n, len(tokens), t.is_alive(), errors)


def test_stopped_tp_worker_is_detected_and_captured(stall: Stall) -> None:
    bundle = stall.bundle
    summary = bundle / "summary.md"
    later = stall.later
    lines = summary.read_text().splitlines()
    assert lines[0].startswith("engine-stall"), lines[0]
    assert lines[1].startswith("Worker_TP1 stopped (state T)"), lines[1]
    assert "EngineCore waits in collective_rpc" in lines[1]
    # Line 3: the known signature and what to try; incident.json has the evidence.
    assert lines[2].startswith("likely: odd-rank-out — Worker_TP1 stopped (state T)"), lines[2]
    assert "; try: " in lines[2] and "kill -CONT" in lines[2]
    incident = json.loads((bundle / "incident.json").read_text())
    (first, *_) = incident["signatures"]
    assert first["name"] == "odd-rank-out"
    assert "Worker_TP1 stopped (state T)" in first["evidence"]
    assert any(e.startswith("Worker_TP0 (pid ") and "all_" in e for e in first["evidence"])
    # The same hang 60 s on: vLLM's own complaint, the broadcast signature naming the worker.
    later_lines = (later / "summary.md").read_text().splitlines()
    assert later_lines[2].startswith("likely: vllm-shm-broadcast-stall — "), later_lines[2]
    assert "Worker_TP1 stopped (state T)" in later_lines[2] and "; try: " in later_lines[2]
    later_doc = json.loads((later / "incident.json").read_text())
    shm = next(m for m in later_doc["signatures"] if m["name"] == "vllm-shm-broadcast-stall")
    assert any(
        e.startswith("server.log.tail:")
        and "No available shared memory broadcast block found in 60 seconds" in e
        for e in shm["evidence"]
    ), shm
    # Stacks came from py-spy's JSON, the text kept for people.
    tp0 = next(p for p in incident["processes"] if p["role"] == "Worker_TP0")
    doc = json.loads((bundle / f"stacks/{tp0['pid']}.json").read_text())
    assert [d["source"] for d in doc["dumps"]] == ["py-spy --json", "py-spy --json"]
    assert incident["kind"] == "engine-stall"
    assert incident["odd_one_out"]["process"] == "Worker_TP1"
    roles = {p["role"]: p for p in incident["processes"]}
    for role in ("APIServer", "EngineCore", "Worker_TP0", "Worker_TP1"):
        assert roles[role]["stack_files"][0] == f"stacks/{roles[role]['pid']}.txt"
        py_spy_stacks(bundle, roles[role]["pid"])  # two dumps py-spy really took
    stacks = list((bundle / "stacks").glob("*.txt"))
    assert len(stacks) >= 4
    assert any("all_reduce" in s.read_text() for s in stacks)
    # Where the healthy rank waits depends on where in the step its peer was stopped: the
    # attention/MLP all_reduce or the logits all_gather.
    assert roles["Worker_TP0"]["wait"] in {"all_reduce", "all_gather_into_tensor", "all_gather"}
    for name in (
        "processes.txt",
        "env.txt",
        "server.log.tail",
        "launch_spec.json",
        "inflight.jsonl",
        "shm.txt",
    ):
        assert (bundle / name).exists(), name
    # kill -CONT: tokens flow again and the stream finishes.
    assert not stall.stream_alive and not stall.errors, stall.errors
    assert stall.tokens_at_end > stall.tokens_at_cont


def _dump_after_the_engine_complains(served: Served, stopped_at: float) -> Path:
    """Wait (Worker_TP1 still stopped) for vLLM's shared-memory broadcast complaint, which
    comes 60 s into the wait, then ``harness dump`` the server; returns the new bundle."""
    log = served.run_dir() / "server.log"
    needle = "No available shared memory broadcast block found"
    wait_for(
        lambda: needle in log.read_text(errors="replace"),
        150 - (time.monotonic() - stopped_at),
        "vLLM's complaint (it comes 60 s after the stop)",
        interval=1,
    )
    waited = time.monotonic() - stopped_at
    out = run(served.runs, "dump", served.run_dir().name, "--gap", "1", timeout=120)
    assert out.returncode == 0, out.stderr
    print(f"vLLM complained {waited:.0f} s after the stop")
    return Path(out.stdout.strip().splitlines()[-1])


def test_no_secret_value_under_runs(served: Served, stall: Stall) -> None:
    files = [p for p in served.runs.rglob("*") if p.is_file()]
    assert any(stall.bundle in p.parents for p in files)  # the incident is searched too
    env_txt = next(p for p in files if p.name == "env.txt").read_text()
    assert "HF_TOKEN=***REDACTED***" in env_txt
    for path in files:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name} leaked into {path}"

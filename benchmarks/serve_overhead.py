"""Benchmark: how much later ``harness serve`` is healthy than the bare engine command.

For each repeat, alternately: (a) the bare engine, started with exactly the argv and
environment of ``harness plan --format json`` in its own session; (b) ``harness serve`` with the
same plan options. Both are timed the same way: from just before the process is started to the
first ``/health`` 200 seen by this script, polling every 50 ms. Then both are stopped (SIGINT to
harness, which stops its server; SIGTERM to the bare group). Goal: harness's median within 1 %
of the bare median.

The bare engine gets the plan's rlimits too (``ulimit -s 65536`` from the default profile), so
that the difference is harness, not the stack limit. On a busy machine the end-to-end medians
are noisy; the benchmark therefore also records the parts of harness's overhead that do not
depend on other load: the time from the command to the engine's spawn (``started_at`` in
state.json) and harness's own CPU time until healthy (what it can take from the engine).

    .venv/bin/python benchmarks/serve_overhead.py --model .cache/tiny-model [--tp 1] \
        [--profile eager] [--repeats 3] [--out benchmarks/results/serve_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from harness import procgroup
from harness.runtime.local import rlimit_setter


def wait_healthy(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 900) -> float:
    """Seconds until ``url`` answers 200 (polled every 50 ms); raises if the process died."""
    t0 = time.perf_counter()
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        while time.perf_counter() - t0 < deadline_s:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode} before healthy")
            try:
                if client.get(url).status_code == 200:
                    return time.perf_counter()
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise RuntimeError("not healthy before the deadline")


def plan(args: argparse.Namespace, runs: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "harness", "--runs-dir", str(runs), "plan", *common(args)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spec: dict[str, object] = json.loads(out)
    return spec


def common(args: argparse.Namespace) -> list[str]:
    return [
        "--engine",
        "vllm",
        "--model",
        args.model,
        "--tp",
        str(args.tp),
        "--profile",
        args.profile,
        "--port",
        str(args.port),
    ]


def bare(spec: dict[str, object], run_dir: Path) -> float:
    """The plan's argv, environment and rlimits (``ulimit -s``, ...), started directly."""
    argv = [str(a) for a in spec["argv"]]  # type: ignore[attr-defined]
    env = {**os.environ, **{str(k): str(v) for k, v in spec["env"].items()}}  # type: ignore[attr-defined]
    limits = {str(k): int(v) for k, v in spec["rlimits"].items()}  # type: ignore[attr-defined]
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "server.log", "wb") as log:
        t0 = time.perf_counter()
        proc = procgroup.spawn(
            argv, env=env, cwd=run_dir, stdout=log, preexec_fn=rlimit_setter(limits)
        )
        try:
            t1 = wait_healthy(str(spec["health_url"]), proc)
        finally:
            procgroup.stop_tree(proc.pid, grace_s=20, popen=proc)
    return t1 - t0


def harness(args: argparse.Namespace, runs: Path, url: str) -> tuple[float, float, float]:
    """(time to healthy, time from the command to the engine's spawn, harness's own CPU
    seconds until healthy)."""
    argv = [sys.executable, "-m", "harness", "--runs-dir", str(runs), "serve", *common(args)]
    before = {p.name for p in runs.iterdir()} if runs.exists() else set()
    wall0 = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        t1 = wait_healthy(url, proc)
        cpu = psutil.Process(proc.pid).cpu_times()
        harness_cpu = cpu.user + cpu.system
        (run_dir,) = [p for p in runs.iterdir() if p.name not in before]
        spawned_at = float(json.loads((run_dir / "state.json").read_text())["started_at"])
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            procgroup.stop_tree(proc.pid, grace_s=5, popen=proc)  # type: ignore[arg-type]
    return t1 - t0, spawned_at - wall0, harness_cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--profile", default="eager")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--port", type=int, default=18990)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    runs = Path(tempfile.mkdtemp()) / "runs"
    spec = plan(args, runs)
    url = str(spec["health_url"])
    results: dict[str, list[float]] = {"bare": [], "harness": []}
    to_spawn: list[float] = []
    harness_cpu: list[float] = []
    for i in range(args.repeats):
        # Alternate which goes first so that a drift of the machine falls on both.
        order = ("bare", "harness") if i % 2 == 0 else ("harness", "bare")
        for which in order:
            if which == "bare":
                took = bare(spec, runs / f"bare-{i}")
            else:
                took, spawn, cpu = harness(args, runs, url)
                to_spawn.append(round(spawn, 3))
                harness_cpu.append(round(cpu, 3))
            results[which].append(round(took, 3))
            print(f"repeat {i + 1} {which}: {took:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    overhead = med["harness"] - med["bare"]
    report = {
        "tp": args.tp,
        "profile": args.profile,
        "repeats": args.repeats,
        "seconds": results,
        "median_s": med,
        "overhead_s": round(overhead, 3),
        "overhead_pct": round(100 * overhead / med["bare"], 2),
        # The parts of the overhead that do not depend on the machine's other load:
        "command_to_engine_spawn_s": to_spawn,
        "harness_cpu_until_healthy_s": harness_cpu,
        "load_average_1m": os.getloadavg()[0],
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

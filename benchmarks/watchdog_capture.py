"""Benchmark: capture time for N sleeping Python processes (N = 1, 4, 16, 64).

Each capture is the full ``capture_incident``: two ``py-spy dump --native`` rounds of every
process (in parallel, ``--gap`` seconds apart), /proc state, env, shm. The goal is a capture of
N processes that takes far less than N times the capture of one.

    .venv/bin/python benchmarks/watchdog_capture.py [--sizes 1,4,16,64] [--gap 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.watchdog.capture import CaptureOptions, capture_incident, find_py_spy

SLEEPER = (
    "import time\ndef sleeping():\n    time.sleep(3600)\nprint('up', flush=True)\nsleeping()\n"
)


def spawn(n: int) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SLEEPER],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for _ in range(n)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "up"
    return procs


def single_pyspy(pid: int) -> float:
    py_spy = find_py_spy()
    assert py_spy
    t = time.perf_counter()
    subprocess.run(
        [py_spy, "dump", "--native", "--pid", str(pid)], capture_output=True, check=True, timeout=30
    )
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,4,16,64")
    ap.add_argument("--gap", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    base: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            procs = spawn(n)
            try:
                one = statistics.median(single_pyspy(procs[0].pid) for _ in range(3))
                times = []
                for r in range(args.repeats):
                    out = Path(tmp) / f"n{n}-{r}"
                    t = time.perf_counter()
                    inc = capture_incident(
                        None,
                        out,
                        pids=[p.pid for p in procs],
                        options=CaptureOptions(gap_s=args.gap),
                    )
                    times.append(time.perf_counter() - t)
                    assert sum(1 for p in inc.processes if p.wait) == n, inc.where
                med = statistics.median(times)
                base = base if base is not None else med
                rows.append((n, med, one, n * base))
            finally:
                for p in procs:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
    print(f"cores: {os.cpu_count()}, gap: {args.gap:g} s, repeats: {args.repeats} (median)")
    print("| N | capture (s) | N x single capture (s) | ratio | one py-spy --native (s) |")
    print("|---|---|---|---|---|")
    for n, med, one, serial in rows:
        print(f"| {n} | {med:.2f} | {serial:.1f} | {med / serial:.3f} | {one:.3f} |")


if __name__ == "__main__":
    main()

"""Benchmark: time from a TP worker's stall to a complete incident bundle (vLLM CPU, TP=2).

Starts ``harness serve --engine vllm --tp 2 --stall-after S`` on a tiny model, warms it up,
streams a long completion, ``kill -STOP``s ``VLLM::Worker_TP1`` (the onset) and measures when
``incidents/1/summary.md`` (written last) appears. Goal: onset -> bundle <= S + 5 s.

    .venv/bin/python benchmarks/watchdog_vllm_stall.py --model DIR [--stall-after 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--stall-after", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--port", type=int, default=18977)
    args = ap.parse_args()
    runs = Path(tempfile.mkdtemp()) / "runs"
    base = f"http://127.0.0.1:{args.port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness",
            "serve",
            "--engine",
            "vllm",
            "--model",
            args.model,
            "--tp",
            "2",
            "--runtime",
            "local",
            "--profile",
            "default,eager",
            "--port",
            str(args.port),
            "--stall-after",
            f"{args.stall_after:g}",
            "--runs-dir",
            str(runs),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    results: list[tuple[float, float]] = []
    try:
        end = time.monotonic() + 600
        while time.monotonic() < end:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        model = httpx.get(base + "/v1/models", timeout=30).json()["data"][0]["id"]
        httpx.post(
            base + "/v1/completions",
            timeout=600,
            json={"model": model, "prompt": "hi", "max_tokens": 4},
        ).raise_for_status()
        (run,) = [p for p in runs.iterdir() if p.is_dir()]
        worker = next(
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "Worker_TP1" in " ".join(p.cmdline())
        )
        for i in range(1, args.repeats + 1):

            def stream() -> None:
                with httpx.stream(
                    "POST",
                    base + "/v1/completions",
                    timeout=600,
                    json={
                        "model": model,
                        "prompt": "hi",
                        "max_tokens": 900,
                        "ignore_eos": True,
                        "stream": True,
                    },
                ) as r:
                    for _ in r.iter_lines():
                        pass

            t = threading.Thread(target=stream, daemon=True)
            t.start()
            time.sleep(2)
            summary = run / "incidents" / str(i) / "summary.md"
            onset = time.time()
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                end = time.monotonic() + 120
                while not summary.exists() and time.monotonic() < end:
                    time.sleep(0.05)
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            took = summary.stat().st_mtime - onset
            import json

            capture = json.loads((summary.parent / "incident.json").read_text())["capture_s"]
            results.append((took, capture))
            t.join(timeout=300)
            time.sleep(args.stall_after / 2)  # let the watchdog see recovery and re-arm
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"stall-after {args.stall_after:g} s, cores {os.cpu_count()}")
    print("| run | onset -> complete bundle (s) | over stall-after (s) | capture (s) |")
    print("|---|---|---|---|")
    for i, (took, cap) in enumerate(results, 1):
        print(f"| {i} | {took:.1f} | {took - args.stall_after:.1f} | {cap:.1f} |")


if __name__ == "__main__":
    main()

"""Client ceiling: ``harness load`` vs ``vllm bench serve`` against a near-zero-cost server.

The server (``--server fast``, the default) is ``benchmarks/fast_openai_server.py``: cached,
pre-built answers, so the client is what limits the run; ``--server sim`` uses
``harness sim --ttft-ms 0 --itl-ms 0`` instead. The server is pinned to core 1, each client to
core 0. First the server's own ceiling under ``wrk`` (a C client; skipped when wrk is not
installed). Workload: 32-token prompts, 16-token streams, 64 in flight, N requests; median of R
repeats, clients interleaved; each run records the CPU share of its core the server used. Then
schedule accuracy (``--rate R --arrival constant``) and memory over a long run.

``--max-load L`` waits (up to 30 min) until the 1-minute load average is below L before each
wrk run, each repeat of the ceiling, each schedule rate and the memory run, so that final
numbers come from a quiet machine; every run records the load average at its start.

    python benchmarks/load_ceiling.py [--server fast|sim] [--requests 4000] [--repeats 3]
        [--max-load 0.6] [--memory-requests 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from load_common import PY, free_port, harness_load, median, server, taskset, tiny_model, vllm_bench

SERVER_CORE, CLIENT_CORE = "1", "0"
HERE = Path(__file__).resolve().parent
OUT_TOKENS = 16


def quiet(max_load: float | None, deadline_s: float = 1800.0) -> float:
    """Wait until the 1-minute load average is below ``max_load``; return it."""
    end = time.monotonic() + deadline_s
    while True:
        load = os.getloadavg()[0]
        if max_load is None or load < max_load:
            return load
        if time.monotonic() > end:
            raise RuntimeError(f"load average still {load:.2f} after {deadline_s:.0f} s")
        print(f"load average {load:.2f} >= {max_load}: waiting", flush=True)
        time.sleep(15)


def _busy() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class CpuShare:
    """CPU time (user+system) over a block: the server's, the client's (children that ended
    in the block), and everybody else's on the machine (``other_s``: a quietness check)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)

    def __enter__(self) -> CpuShare:
        t = self.proc.cpu_times()
        self.c0, self.t0 = t.user + t.system, time.monotonic()
        self.b0, self.k0 = _busy(), _children()
        return self

    def __exit__(self, *exc: object) -> None:
        t = self.proc.cpu_times()
        self.cpu_s = t.user + t.system - self.c0
        self.wall_s = time.monotonic() - self.t0
        self.client_s = _children() - self.k0
        self.other_s = max(0.0, _busy() - self.b0 - self.cpu_s - self.client_s)


def wrk_ceiling(url: str, api: str, seconds: int) -> dict[str, Any] | None:
    """The server's ceiling under wrk (1 thread, 64 connections, on the client core)."""
    if shutil.which("wrk") is None:
        return None
    path = "/v1/chat/completions" if api == "chat" else "/v1/completions"
    cmd = [
        *taskset(CLIENT_CORE),
        "wrk",
        "-t1",
        "-c64",
        f"-d{seconds}s",
        "-s",
        str(HERE / "wrk_stream.lua"),
        url + path,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "req_s": float(m.group(1)) if m else None,
        "socket_errors": errors.group(0) if errors else None,
        "cmd": " ".join(cmd),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rates", default="250,500,1000,1500,2000")
    ap.add_argument("--memory-requests", type=int, default=100_000)
    ap.add_argument("--skip", default="", help="comma list of: wrk,ceiling,schedule,memory")
    ap.add_argument("--out", default="benchmarks/results/load_ceiling.json")
    ap.add_argument("--server", choices=("fast", "sim"), default="fast")
    ap.add_argument("--max-load", type=float, default=None, help="wait for a quiet machine")
    ap.add_argument("--wrk-seconds", type=int, default=10)
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    tok = tiny_model(Path(tempfile.gettempdir()) / "harness-bench-tiny")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fast = [
        *taskset(SERVER_CORE),
        PY,
        str(HERE / "fast_openai_server.py"),
        "--port",
        str(port),
        "--model",
        "sim-model",
    ]
    sim = [
        *taskset(SERVER_CORE),
        PY,
        "-m",
        "harness",
        "sim",
        "--port",
        str(port),
        "--ttft-ms",
        "0",
        "--itl-ms",
        "0",
        "--startup-s",
        "0",
        "--stats-interval",
        "0",
    ]
    argv = fast if args.server == "fast" else sim
    results: dict[str, Any] = {
        "server": " ".join(argv),
        "max_load": args.max_load,
        "server_wrk": {},
        "ceiling": {},
        "schedule": [],
        "memory": None,
    }
    n = args.requests
    with server(argv, url + "/health") as srv:
        # taskset execs the server, so the pid is the server's.
        share = CpuShare(srv.pid)
        if "wrk" not in skip:
            for api in ("chat", "completions"):
                load = quiet(args.max_load)
                with share:
                    w = wrk_ceiling(url, api, args.wrk_seconds)
                if w is not None:
                    w["server_cpu_share"] = round(share.cpu_s / share.wall_s, 3)
                    w["load_avg_1m"] = load
                    w["other_cpu_s"] = round(share.other_s, 2)
                results["server_wrk"][api] = w
                print("wrk", api, w, flush=True)
        if "ceiling" not in skip:
            runs: dict[str, list[dict[str, Any]]] = {}
            for rep in range(args.repeats):
                quiet(args.max_load)  # before each repeat (our own runs raise the average too)
                for api in ("chat", "completions"):
                    load = os.getloadavg()[0]
                    with share:
                        h = harness_load(
                            url,
                            [
                                "-w",
                                "chat-short",
                                "--api",
                                api,
                                "--prompt-tokens",
                                "32",
                                "--max-tokens",
                                "16",
                                "-c",
                                "64",
                                "-n",
                                str(n),
                                "--seed",
                                str(rep),
                            ],
                            CLIENT_CORE,
                        )
                    assert h["_lines"] == n and h["requests"]["completed"] == n
                    assert h["tokens"]["output"] == OUT_TOKENS * n, h["tokens"]
                    runs.setdefault(f"harness/{api}", []).append(
                        {
                            "req_s": h["throughput"]["requests_per_s"],
                            "tok_s": h["throughput"]["output_tokens_per_s"],
                            "output_tokens": h["tokens"]["output"],
                            "server_cpu_share": _share(share, n, h["throughput"]["requests_per_s"]),
                            "load_avg_1m": load,
                            "other_cpu_s": round(share.other_s, 2),
                            "wall_s": round(share.wall_s, 2),
                            "cmd": h["_cmd"],
                        }
                    )
                    backend = (
                        ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions"]
                        if api == "chat"
                        else ["--backend", "openai", "--endpoint", "/v1/completions"]
                    )
                    load = os.getloadavg()[0]
                    with share:
                        v = vllm_bench(
                            url,
                            [
                                *backend,
                                "--model",
                                "sim-model",
                                "--tokenizer",
                                str(tok),
                                "--dataset-name",
                                "random",
                                "--random-input-len",
                                "32",
                                "--random-output-len",
                                "16",
                                "--ignore-eos",
                                "--num-prompts",
                                str(n),
                                "--max-concurrency",
                                "64",
                                "--seed",
                                str(rep),
                            ],
                            CLIENT_CORE,
                        )
                    assert v["completed"] == n and v["total_output_tokens"] == OUT_TOKENS * n, (
                        v["completed"],
                        v["total_output_tokens"],
                    )
                    runs.setdefault(f"vllm-bench/{api}", []).append(
                        {
                            "req_s": v["request_throughput"],
                            "tok_s": v["output_throughput"],
                            "output_tokens": v["total_output_tokens"],
                            "server_cpu_share": _share(share, n, v["request_throughput"]),
                            "load_avg_1m": load,
                            "other_cpu_s": round(share.other_s, 2),
                            "wall_s": round(share.wall_s, 2),
                            "cmd": v["_cmd"],
                        }
                    )
                    print(
                        rep,
                        api,
                        runs[f"harness/{api}"][-1]["req_s"],
                        runs[f"vllm-bench/{api}"][-1]["req_s"],
                        flush=True,
                    )
            for key, rs in runs.items():
                results["ceiling"][key] = {
                    "req_s_median": median([r["req_s"] for r in rs]),
                    "tok_s_median": median([r["tok_s"] for r in rs]),
                    "req_s_all": [r["req_s"] for r in rs],
                    "tok_s_all": [r["tok_s"] for r in rs],
                    "server_cpu_share_all": [r["server_cpu_share"] for r in rs],
                    "load_avg_1m_all": [r["load_avg_1m"] for r in rs],
                    "other_cpu_s_all": [r["other_cpu_s"] for r in rs],
                    "cmd": rs[0]["cmd"],
                }
            c = results["ceiling"]
            results["ratio_req_s"] = {
                api: round(
                    c[f"harness/{api}"]["req_s_median"] / c[f"vllm-bench/{api}"]["req_s_median"], 3
                )
                for api in ("chat", "completions")
            }
        if "schedule" not in skip:
            for rate in [float(r) for r in args.rates.split(",")]:
                count = int(rate * 5)
                quiet(args.max_load)
                h = harness_load(
                    url,
                    [
                        "-w",
                        "chat-short",
                        "--prompt-tokens",
                        "32",
                        "--max-tokens",
                        "16",
                        "--rate",
                        str(rate),
                        "--arrival",
                        "constant",
                        "-n",
                        str(count),
                    ],
                    CLIENT_CORE,
                )
                entry = {
                    "client": "harness",
                    "requested": rate,
                    "achieved": h["rate"]["achieved"],
                    "ratio": h["rate"]["achieved_over_requested"],
                    "send_lag_p99_ms": h["rate"]["send_lag_ms"]["p99"],
                    "completed_req_s": h["throughput"]["requests_per_s"],
                    "cmd": h["_cmd"],
                }
                results["schedule"].append(entry)
                print(entry, flush=True)
            quiet(args.max_load)
            v = vllm_bench(
                url,
                [
                    "--backend",
                    "openai-chat",
                    "--endpoint",
                    "/v1/chat/completions",
                    "--model",
                    "sim-model",
                    "--tokenizer",
                    str(tok),
                    "--dataset-name",
                    "random",
                    "--random-input-len",
                    "32",
                    "--random-output-len",
                    "16",
                    "--ignore-eos",
                    "--num-prompts",
                    "5000",
                    "--request-rate",
                    "1000",
                ],
                CLIENT_CORE,
            )
            results["schedule"].append(
                {
                    "client": "vllm bench serve",
                    "requested": 1000.0,
                    "achieved": v["request_throughput"],
                    "ratio": v["request_throughput"] / 1000.0,
                    "cmd": v["_cmd"],
                }
            )
            print(results["schedule"][-1], flush=True)
        if "memory" not in skip:
            quiet(args.max_load)
            results["memory"] = memory_run(url, args.memory_requests)
            print(results["memory"], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "server"}, indent=2))


def _share(share: CpuShare, n: int, req_s: float) -> float:
    """The server's CPU share of its core over the measured part of a run (n / req_s seconds;
    the client's start-up, e.g. vllm bench building its dataset, costs the server nothing)."""
    return round(share.cpu_s / (n / req_s), 3)


def memory_run(url: str, n: int) -> dict[str, Any]:
    """RSS of ``harness load`` sampled every second over an n-request closed-loop run."""
    with tempfile.TemporaryDirectory() as runs:
        cmd = [
            *taskset(CLIENT_CORE),
            PY,
            "-m",
            "harness",
            "load",
            "--url",
            url,
            "--runs-dir",
            runs,
            "--no-progress",
            "-w",
            "chat-short",
            "--prompt-tokens",
            "32",
            "--max-tokens",
            "16",
            "-c",
            "64",
            "-n",
            str(n),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        samples: list[tuple[float, int, int]] = []
        ps = psutil.Process(proc.pid)

        def sample() -> None:
            t0 = time.monotonic()
            while proc.poll() is None:
                try:
                    rss = ps.memory_info().rss
                    run_dirs = list(Path(runs).iterdir())
                    done = (
                        sum(1 for _ in (run_dirs[0] / "requests.jsonl").open())
                        if run_dirs and (run_dirs[0] / "requests.jsonl").exists()
                        else 0
                    )
                except (psutil.Error, OSError):
                    break
                samples.append((time.monotonic() - t0, done, rss))
                time.sleep(1.0)

        th = threading.Thread(target=sample)
        th.start()
        proc.wait()
        th.join()

    def rss_at(frac: float) -> float:
        target = n * frac
        best = min(samples, key=lambda s: abs(s[1] - target))
        return round(best[2] / 2**20, 1)

    return {
        "requests": n,
        "cmd": " ".join(cmd),
        "rss_mib_at": {f"{int(f * 100)}%": rss_at(f) for f in (0.1, 0.25, 0.5, 0.75, 1.0)},
        "rss_mib_max": round(max(s[2] for s in samples) / 2**20, 1),
    }


if __name__ == "__main__":
    main()

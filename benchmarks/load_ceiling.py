"""Client ceiling: ``harness load`` vs ``vllm bench serve`` against a near-zero-cost server.

The server is ``harness sim --ttft-ms 0 --itl-ms 0`` (every answer written at once) pinned to
one core; each client is pinned to the other. Workload: 32-token prompts, 16-token streams, 64
in flight, N requests; median of R repeats, clients interleaved. Then schedule accuracy
(``--rate R --arrival constant``) and memory over a long run.

    python benchmarks/load_ceiling.py [--requests 4000] [--repeats 3] [--memory-requests 100000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from load_common import PY, free_port, harness_load, median, server, taskset, tiny_model, vllm_bench

SERVER_CORE, CLIENT_CORE = "1", "0"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rates", default="250,500,1000,1500,2000")
    ap.add_argument("--memory-requests", type=int, default=100_000)
    ap.add_argument("--skip", default="", help="comma list of: ceiling,schedule,memory")
    ap.add_argument("--out", default="benchmarks/results/load_ceiling.json")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    tok = tiny_model(Path(tempfile.gettempdir()) / "harness-bench-tiny")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
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
    results: dict[str, Any] = {
        "server": " ".join(sim),
        "ceiling": {},
        "schedule": [],
        "memory": None,
    }
    n = args.requests
    with server(sim, url + "/health"):
        if "ceiling" not in skip:
            runs: dict[str, list[dict[str, Any]]] = {}
            for rep in range(args.repeats):
                for api in ("chat", "completions"):
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
                    runs.setdefault(f"harness/{api}", []).append(
                        {
                            "req_s": h["throughput"]["requests_per_s"],
                            "tok_s": h["throughput"]["output_tokens_per_s"],
                            "cmd": h["_cmd"],
                        }
                    )
                    backend = (
                        ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions"]
                        if api == "chat"
                        else ["--backend", "openai", "--endpoint", "/v1/completions"]
                    )
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
                    runs.setdefault(f"vllm-bench/{api}", []).append(
                        {
                            "req_s": v["request_throughput"],
                            "tok_s": v["output_throughput"],
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
                    "cmd": rs[0]["cmd"],
                }
        if "schedule" not in skip:
            for rate in [float(r) for r in args.rates.split(",")]:
                count = int(rate * 5)
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
            results["memory"] = memory_run(url, args.memory_requests)
            print(results["memory"], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "server"}, indent=2))


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

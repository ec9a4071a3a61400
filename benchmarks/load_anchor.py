"""Agreement with the anchor: ``harness load`` vs ``vllm bench serve`` on the same real vLLM CPU
server (the tiny model) and the same workload: completions, fixed 64-token prompts, 32 tokens
out with ignore_eos, 4 in flight. Clients alternate; median of R repeats of each. Goal: mean
TTFT, mean TPOT and output token throughput within 10 %.

    python benchmarks/load_anchor.py [--repeats 3] [--requests 96]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from load_common import PY, free_port, harness_load, median, server, taskset, tiny_model, vllm_bench


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/results/load_anchor.json")
    args = ap.parse_args()
    model = tiny_model(Path(tempfile.gettempdir()) / "harness-bench-tiny")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        *taskset("1"),
        PY,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--enforce-eager",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    rows: dict[str, list[dict[str, float]]] = {"harness load": [], "vllm bench serve": []}
    cmds: dict[str, str] = {}
    n, c = str(args.requests), str(args.concurrency)
    with server(argv, url + "/health", env={"VLLM_CPU_KVCACHE_SPACE": "1"}):
        # one warm-up pass so neither client pays for first-request compilation
        harness_load(
            url,
            [
                "--api",
                "completions",
                "--prompt-tokens",
                "8",
                "--max-tokens",
                "4",
                "--ignore-eos",
                "-c",
                "1",
                "-n",
                "4",
            ],
            "0",
        )
        for rep in range(args.repeats):
            h = harness_load(
                url,
                [
                    "--api",
                    "completions",
                    "--prompt-tokens",
                    str(args.input_len),
                    "--max-tokens",
                    str(args.output_len),
                    "--ignore-eos",
                    "-c",
                    c,
                    "-n",
                    n,
                    "--seed",
                    str(rep),
                ],
                "0",
            )
            rows["harness load"].append(
                {
                    "ttft_ms": h["latency_ms"]["ttft"]["mean"],
                    "tpot_ms": h["latency_ms"]["tpot"]["mean"],
                    "out_tok_s": h["throughput"]["output_tokens_per_s"],
                }
            )
            cmds["harness load"] = h["_cmd"]
            v = vllm_bench(
                url,
                [
                    "--backend",
                    "openai",
                    "--endpoint",
                    "/v1/completions",
                    "--model",
                    str(model),
                    "--dataset-name",
                    "random",
                    "--random-input-len",
                    str(args.input_len),
                    "--random-output-len",
                    str(args.output_len),
                    "--ignore-eos",
                    "--num-prompts",
                    n,
                    "--max-concurrency",
                    c,
                    "--seed",
                    str(rep),
                ],
                "0",
            )
            rows["vllm bench serve"].append(
                {
                    "ttft_ms": v["mean_ttft_ms"],
                    "tpot_ms": v["mean_tpot_ms"],
                    "out_tok_s": v["output_throughput"],
                }
            )
            cmds["vllm bench serve"] = v["_cmd"]
            print(rep, rows["harness load"][-1], rows["vllm bench serve"][-1], flush=True)
    result: dict[str, Any] = {"runs": rows, "commands": cmds, "median": {}, "ratio": {}}
    for client, rs in rows.items():
        result["median"][client] = {k: round(median([r[k] for r in rs]), 3) for k in rs[0]}
    for k in ("ttft_ms", "tpot_ms", "out_tok_s"):
        a, b = result["median"]["harness load"][k], result["median"]["vllm bench serve"][k]
        result["ratio"][k] = round(a / b, 3)
    result["within_10_percent"] = all(abs(r - 1) <= 0.10 for r in result["ratio"].values())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median", "ratio", "within_10_percent")}, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: what a campaign costs in harness overhead per cell.

Runs ``harness compare`` (or reads an existing compare run with ``--run DIR``) and reports, per
cell-repeat, from ``cells.jsonl``:

* engine start: launch to healthy (the engine's own startup, for scale);
* harness before the load: healthy to the first request sent (plan is made before the launch;
  this is load setup: tokenizer, workload, client);
* harness after the load: the last request finished to the server stopped (load teardown,
  watchdog stop, the server's SIGTERM-to-exit, which is mostly the engine's shutdown).

    .venv/bin/python benchmarks/campaign_overhead.py -- --engine sim --model sim --tp 1,2 \
        --repeats 3 --requests 50 -c 4
    .venv/bin/python benchmarks/campaign_overhead.py --run runs/20261201-124020-compare-0c03
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def summarize(run: Path) -> dict[str, object]:
    rows = [json.loads(line) for line in (run / "cells.jsonl").read_text().splitlines()]
    out: dict[str, object] = {"run": str(run), "cell_repeats": len(rows)}
    for key in (
        "start_to_healthy_s",
        "healthy_to_first_request_s",
        "last_request_to_stopped_s",
        "stop_s",
    ):
        values = [r["overhead"][key] for r in rows if r.get("overhead", {}).get(key) is not None]
        out[key] = {
            "median": round(statistics.median(values), 3) if values else None,
            "max": round(max(values), 3) if values else None,
            "values": values,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, help="an existing compare run directory")
    ap.add_argument("compare_args", nargs="*", help="arguments for `harness compare` after --")
    args = ap.parse_args()
    if args.run is None:
        runs = Path(tempfile.mkdtemp()) / "runs"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "harness",
                "--runs-dir",
                str(runs),
                "compare",
                *args.compare_args,
            ],
            check=False,
        )
        (args.run,) = [p for p in runs.iterdir() if p.is_dir()]
    print(json.dumps(summarize(args.run), indent=2))


if __name__ == "__main__":
    main()

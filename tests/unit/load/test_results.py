"""``write_result_files``: bench_result.json and requests.csv streamed from requests.jsonl."""

from __future__ import annotations

import csv
import json
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from harness.load.results import write_result_files
from harness.report import exports
from harness.report.exports import build_bench_result
from harness.report.requestscsv import CSV_COLUMNS


def summary() -> dict[str, Any]:
    return {
        "requests": {"sent": 40},
        "rate": {"requested": 4.0},
        "goodput": {"slo": {"ttft_ms": 20.0, "tpot_ms": None, "e2e_ms": None}},
        "run": {
            "model": "tiny",
            "mode": "open",
            "arrival": "poisson",
            "concurrency": None,
            "requests": None,
            "started_at": 1_700_000_000.0,
            "elapsed_s": 10.0,
            "api": "completions",
            "metric_percentiles": [50, 90, 99, 99.9],
        },
    }


def record(index: int, rng: random.Random, tokens: int = 8) -> dict[str, Any]:
    status = rng.choice(["ok", "ok", "ok", "failed", "stalled"])
    ttft = rng.uniform(5, 40)
    itl = [round(rng.uniform(1, 9), 3) for _ in range(tokens - 1)] if status != "failed" else []
    return {
        "index": index,
        "status": status,
        "error": None if status == "ok" else ("http_500" if status == "failed" else "token_stall"),
        "error_detail": 'boom, "quoted"\nline' if status == "failed" else None,
        "http_status": 500 if status == "failed" else 200,
        "request_id": f"cmpl-{index}",
        "sent_at": 1_700_000_000.0 + index * 0.25,
        "sent_s": index * 0.25 + 0.001,
        "scheduled_s": index * 0.25,
        "ttft_ms": None if status == "failed" else round(ttft, 3),
        "tpot_ms": round(sum(itl) / len(itl), 3) if status == "ok" else None,
        "e2e_ms": round(ttft + sum(itl), 3) if status == "ok" else None,
        "duration_ms": round(ttft + sum(itl) + 1, 3),
        "itl_ms": itl,
        "prompt_tokens": 30 + index % 7,
        "prompt_tokens_planned": 30 + index % 7,
        "output_tokens": tokens if status == "ok" else len(itl),
        "max_tokens": tokens,
        "finish_reason": "length" if status == "ok" else None,
        "last_token_at": None,
        "path": "/v1/completions",
    }


def test_streamed_files_equal_the_in_memory_build(tmp_path: Path) -> None:
    rng = random.Random(7)
    earlier = [record(i, rng) for i in range(5)]  # an earlier load in the same run directory
    mine = [record(i, rng) for i in range(40)]
    rng.shuffle(mine)  # finish order, not index order
    path = tmp_path / "requests.jsonl"
    head = "".join(json.dumps(r) + "\n" for r in earlier)
    path.write_text(head + "".join(json.dumps(r) + "\n" for r in mine) + '{"index": 99, "sta')
    written = write_result_files(tmp_path, summary(), path, records_offset=len(head.encode()))
    assert written == [tmp_path / "bench_result.json", tmp_path / "requests.csv"]
    bench = json.loads((tmp_path / "bench_result.json").read_text())
    assert bench == json.loads(json.dumps(build_bench_result(summary(), mine)))
    assert bench["completed"] == sum(r["status"] == "ok" for r in mine)
    assert bench["num_prompts"] == 40 and bench["request_goodput"] is not None
    assert bench["queue_times"][0] == 0.001 and bench["p99.9_ttft_ms"] > 0

    with open(tmp_path / "requests.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [int(r["index"]) for r in rows] == [r["index"] for r in mine]  # file order
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["error_detail"] == 'boom, "quoted"\nline' and failed["ttft_ms"] == ""
    assert not list(tmp_path.glob(".*.tmp"))


def test_memory_does_not_grow_with_the_per_request_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,000 requests of 200 tokens: as Python objects the records take about 20 MB; streamed,
    the writer holds the per-request scalars and the latency samples (here folded into a
    histogram after 50,000, as it does after 2 million in a real run)."""
    monkeypatch.setattr(exports, "EXACT_SAMPLES", 50_000)
    rng = random.Random(1)
    path = tmp_path / "requests.jsonl"
    with open(path, "w") as fh:
        for i in range(2_000):
            rec = record(i, rng, tokens=200)
            rec["status"], rec["error"], rec["error_detail"] = "ok", None, None
            rec["itl_ms"] = [round(rng.uniform(1, 9), 3) for _ in range(199)]
            rec["e2e_ms"], rec["tpot_ms"], rec["ttft_ms"] = 900.0, 4.5, 10.0
            fh.write(json.dumps(rec) + "\n")
    tracemalloc.start()
    try:
        write_result_files(tmp_path, summary(), path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    bench = json.loads((tmp_path / "bench_result.json").read_text())
    assert len(bench["itls"]) == 2_000 and bench["completed"] == 2_000
    assert sum(map(len, bench["itls"])) == 2_000 * 199
    assert bench["median_itl_ms"] == pytest.approx(5.0, rel=0.05)

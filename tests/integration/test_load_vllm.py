"""``harness load`` against the real vLLM CPU server with the tiny model (one server per module)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have_module, require
from tests.integration.harnesscli import only_dir, run
from tests.integration.servers import vllm_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def vllm_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require(have_module("vllm"), "vllm (CPU build)")
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with vllm_server(tiny_model_dir, log) as (url, _):
        yield url


def run_load(runs: Path, *args: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    res = run(runs, "load", "--no-progress", *args, timeout=600)
    assert res.returncode == 0, res.stderr
    run_dir = only_dir(runs)
    recs = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    return json.loads((run_dir / "summary.json").read_text()), recs


def test_exact_prompt_lengths_and_fixed_outputs(vllm_url: str, runs_dir: Path) -> None:
    summary, recs = run_load(
        runs_dir,
        "--url",
        vllm_url,
        "-w",
        "chat-short",
        "--api",
        "completions",
        "--prompt-tokens",
        "40",
        "--max-tokens",
        "8",
        "--ignore-eos",
        "-c",
        "4",
        "-n",
        "16",
    )
    assert summary["run"]["tokenizer_exact"] is True  # the model directory's tokenizer
    assert len(recs) == 16 and all(r["status"] == "ok" for r in recs)
    assert all(r["output_tokens"] == 8 and r["finish_reason"] == "length" for r in recs)
    # The server's count (usage) equals ours, up to the BOS token it adds.
    assert {r["prompt_tokens"] - r["prompt_tokens_planned"] for r in recs} <= {0, 1}
    assert all(r["prompt_tokens_planned"] == 40 for r in recs)
    assert all(r["request_id"].startswith("cmpl-") for r in recs)
    assert summary["latency_ms"]["tpot"]["mean"] > 0
    # vllm bench serve's result file, from the real server's stream.
    (run,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    bench = json.loads((run / "bench_result.json").read_text())
    assert (bench["completed"], bench["failed"], bench["total_output_tokens"]) == (16, 0, 128)
    assert bench["backend"] == "openai" and bench["max_concurrency"] == 4
    assert sorted(bench["input_lens"]) == sorted(r["prompt_tokens"] for r in recs)
    assert all(len(itl) == 7 for itl in bench["itls"]) and bench["mean_tpot_ms"] > 0
    assert bench["p99_ttft_ms"] >= bench["median_ttft_ms"] > 0


def test_vlm_requests_to_a_text_model_fail_cleanly(vllm_url: str, runs_dir: Path) -> None:
    summary, recs = run_load(
        runs_dir,
        "--url",
        vllm_url,
        "-w",
        "vlm-mixed",
        "-c",
        "2",
        "-n",
        "6",
        "--max-image-pixels",
        "250000",
    )
    assert len(recs) == 6
    assert all(r["status"] == "failed" and r["http_status"] == 400 for r in recs)
    assert {r["error"] for r in recs} == {"http_400:BadRequestError"}
    assert all("multimodal" in (r["error_detail"] or "") for r in recs)
    assert summary["requests"]["failed"] == 6 and summary["errors"] == {
        "http_400:BadRequestError": 6
    }

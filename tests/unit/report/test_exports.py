from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from harness.report.exports import (
    LIST_KEYS,
    BenchResult,
    _Samples,
    build_bench_result,
    parse_goodput,
    parse_metric_percentiles,
    percentile_key,
)

# The keys of `vllm bench serve --save-result --save-detailed --percentile-metrics
# ttft,tpot,itl,e2el --metric-percentiles 50,99` (vLLM 0.32, vllm/benchmarks/serve.py), in its
# order, without generated_texts (the load keeps no answers).
VLLM_KEYS = [
    "date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts",
    "request_rate", "burstiness", "max_concurrency", "duration", "completed", "failed",
    "total_input_tokens", "total_output_tokens", "request_throughput", "request_goodput",
    "output_throughput", "total_token_throughput", "input_lens", "output_lens", "ttfts", "itls",
    "latencies", "start_times", "queue_times", "errors", "max_output_tokens_per_s",
    "max_concurrent_requests", "rtfx",
    *(
        f"{stat}_{metric}_ms"
        for metric in ("ttft", "tpot", "itl", "e2el")
        for stat in ("mean", "median", "std", "p50", "p99")
    ),
]  # fmt: skip


def summary(**run: Any) -> dict[str, Any]:
    base = {
        "model": "tiny",
        "tokenizer": "/models/tiny",
        "mode": "closed",
        "concurrency": 2,
        "requests": 4,
        "started_at": 1_700_000_000.0,
        "elapsed_s": 2.0,
        "api": "chat",
        "metric_percentiles": [50, 99],
    }
    return {
        "requests": {"sent": 4},
        "rate": {"requested": None},
        "goodput": None,
        "run": base | run,
    }


def record(index: int, status: str = "ok", **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "index": index,
        "status": status,
        "error": None if status == "ok" else "token_stall",
        "error_detail": None,
        "http_status": 200,
        "request_id": f"r{index}",
        "sent_at": 100.0 + index * 0.5,
        "sent_s": index * 0.5,
        "ttft_ms": 10.0 + index,
        "tpot_ms": 5.0 if status == "ok" else None,
        "e2e_ms": 30.0 + index if status == "ok" else None,
        "duration_ms": 31.0 + index,
        "itl_ms": [5.0, 5.0, 10.0] if status == "ok" else [4.0],
        "prompt_tokens": 20 + index,
        "prompt_tokens_planned": 19 + index,
        "output_tokens": 4 if status == "ok" else 2,
        "max_tokens": 4,
        "finish_reason": "length" if status == "ok" else None,
        "last_token_at": 100.03,
        "path": "/v1/chat/completions",
    }
    rec.update(kw)
    return rec


def test_percentile_names_and_parsing() -> None:
    assert [percentile_key(p) for p in (50, 99.0, 99.9, 0.5)] == ["p50", "p99", "p99.9", "p0.5"]
    assert parse_metric_percentiles("50,90, 99,99.9") == (50.0, 90.0, 99.0, 99.9)
    for bad in ("", "abc", "101", "-1", "50,,nan"):
        with pytest.raises(ValueError):
            parse_metric_percentiles(bad)


def test_goodput_pairs_the_vllm_way() -> None:
    assert parse_goodput(["ttft:500", "tpot:50"]) == {"ttft": 500.0, "tpot": 50.0}
    assert parse_goodput(["ttft:500 e2el:2000"]) == {"ttft": 500.0, "e2el": 2000.0}
    assert parse_goodput(["TTFT:1,tpot:2"]) == {"ttft": 1.0, "tpot": 2.0}
    for bad in (["ttft"], ["itl:5"], ["ttft:fast"], ["ttft:-1"], ["e2e:5"]):
        with pytest.raises(ValueError, match="ttft"):
            parse_goodput(bad)


def test_keys_order_and_units_match_vllm() -> None:
    recs = [record(2), record(0), record(1, "stalled"), record(3)]
    out = build_bench_result(summary(), recs)
    assert list(out) == VLLM_KEYS
    assert out["endpoint_type"] == out["backend"] == "openai-chat" and out["label"] is None
    assert out["request_rate"] == "inf" and out["burstiness"] == 1.0
    assert out["max_concurrency"] == 2 and out["num_prompts"] == 4
    assert (out["completed"], out["failed"]) == (3, 1)
    # One entry per request in request-index order; seconds, not milliseconds.
    assert out["ttfts"] == pytest.approx([0.010, 0.011, 0.012, 0.013])
    assert out["itls"][0] == pytest.approx([0.005, 0.005, 0.010]) and out["itls"][1] == [0.004]
    assert out["latencies"] == pytest.approx([0.030, 0.0, 0.032, 0.033])
    assert out["input_lens"] == [20, 21, 22, 23] and out["output_lens"] == [4, 0, 4, 4]
    assert out["errors"] == ["", "token_stall", "", ""]
    assert out["start_times"] == [100.0, 100.5, 101.0, 101.5]
    assert out["queue_times"] == [0.0] * 4  # closed loop: nothing scheduled
    assert out["total_input_tokens"] == 20 + 22 + 23 and out["total_output_tokens"] == 12
    assert out["request_throughput"] == 1.5 and out["output_throughput"] == 6.0
    assert out["total_token_throughput"] == (65 + 12) / 2
    assert out["request_goodput"] is None
    assert out["mean_ttft_ms"] == pytest.approx(np.mean([10, 12, 13]))
    assert out["std_ttft_ms"] == pytest.approx(np.std([10, 12, 13]))
    assert out["p99_e2el_ms"] == pytest.approx(np.percentile([30, 32, 33], 99))
    assert out["median_itl_ms"] == 5.0 and out["mean_itl_ms"] == pytest.approx(20 / 3)
    assert out["rtfx"] == 0.0


def test_open_loop_settings_ramp_gamma_constant_and_queue_times() -> None:
    s = summary(mode="open", arrival="gamma", burstiness=0.5, ramp={"from": 1.0, "seconds": 5})
    s["rate"]["requested"] = 8.0
    recs = [record(0, scheduled_s=0.0, sent_s=0.25), record(1, scheduled_s=0.5, sent_s=0.5)]
    out = build_bench_result(s, recs)
    assert out["request_rate"] == 8.0 and out["burstiness"] == 0.5
    assert (out["ramp_up_strategy"], out["ramp_up_start_rps"], out["ramp_up_end_rps"]) == (
        "linear",
        1.0,
        8.0,
    )
    assert out["queue_times"] == [0.25, 0.0]
    s = summary(mode="open", arrival="constant", api="completions")
    s["rate"]["requested"] = 2.0
    out = build_bench_result(s, [record(0, path="/v1/completions")])
    assert out["burstiness"] == "inf" and out["backend"] == "openai"


def test_goodput_and_one_token_answers() -> None:
    s = summary()
    s["goodput"] = {"slo": {"ttft_ms": 11.5, "tpot_ms": 7.0, "e2e_ms": None}}
    recs = [record(0), record(1), record(2, tpot_ms=None, output_tokens=1)]
    out = build_bench_result(s, recs)
    # 0: ttft 10 ok; 1: ttft 11 ok; 2: ttft 12 > 11.5 -> not good.
    assert out["request_goodput"] == 1.0
    # TPOT = (e2e - ttft) / (tokens - 1); a one-token answer has none (vLLM leaves it out of
    # the TPOT statistics, and counts it as 0 for goodput).
    assert out["mean_tpot_ms"] == pytest.approx(20 / 3)
    s["goodput"]["slo"]["tpot_ms"] = 6.0  # 0 and 1 now miss it; 2 (one token) meets it
    s["goodput"]["slo"]["ttft_ms"] = 100.0
    assert build_bench_result(s, recs)["request_goodput"] == 0.5


def test_peak_tokens_and_concurrency_use_vllm_buckets() -> None:
    # Request 0 sends at 100.0: tokens at 100.5, 100.9, 101.2; ends 101.2.
    # Request 1 sends at 100.5: tokens at 100.6, 100.7; ends 100.7.
    recs = [
        record(0, sent_at=100.0, ttft_ms=500.0, itl_ms=[400.0, 300.0], e2e_ms=1200.0),
        record(1, sent_at=100.5, ttft_ms=100.0, itl_ms=[100.0], e2e_ms=200.0),
    ]
    out = build_bench_result(summary(), recs)
    assert out["max_output_tokens_per_s"] == 4.0  # second [0, 1): 100.5, 100.6, 100.7, 100.9
    assert out["max_concurrent_requests"] == 2


def test_nothing_completed_gives_zeros_as_vllm_writes() -> None:
    out = build_bench_result(summary(), [record(0, "failed"), record(1, "aborted")])
    assert out["completed"] == 0 and out["failed"] == 2
    assert out["mean_ttft_ms"] == out["p99_itl_ms"] == out["std_e2el_ms"] == 0.0
    assert out["max_output_tokens_per_s"] == 0.0 and out["max_concurrent_requests"] == 0
    assert out["errors"] == ["token_stall", "token_stall"]


def test_no_itl_records_leave_itl_statistics_null() -> None:
    recs = [{k: v for k, v in record(0).items() if k != "itl_ms"}]
    out = build_bench_result(summary(), recs)
    assert out["itls"] == [[]] and out["mean_itl_ms"] is None and out["p99_itl_ms"] is None
    assert out["mean_ttft_ms"] == 10.0


def test_samples_fold_into_a_histogram_past_the_limit() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(3.0, 0.7, size=5000)
    exact, folded = _Samples(), _Samples(limit=1000)
    for v in values:
        exact.add(float(v))
        folded.add(float(v))
    a, b = exact.stats([50, 99]), folded.stats([50, 99])
    assert a["mean"] == pytest.approx(np.mean(values)) and a["p99"] == pytest.approx(
        np.percentile(values, 99)
    )
    assert b["mean"] == pytest.approx(a["mean"]) and b["std"] == pytest.approx(a["std"])
    for key in ("median", "p50", "p99"):
        assert b[key] == pytest.approx(a[key], rel=0.011)


def test_two_pass_builder_matches_the_in_memory_one() -> None:
    recs = [record(i, "ok" if i % 3 else "stalled") for i in (5, 3, 1, 0, 2, 4)]
    builder = BenchResult(summary())
    for rec in recs:
        builder.add(rec)
    order = builder.order()
    assert [recs[i]["index"] for i in order] == [0, 1, 2, 3, 4, 5]
    for i in order:
        builder.add_tokens(recs[i])
    whole = build_bench_result(summary(), recs)
    assert builder.head() | builder.tail() == {k: v for k, v in whole.items() if k not in LIST_KEYS}
    assert all(not isinstance(v, float) or math.isfinite(v) for v in whole.values())

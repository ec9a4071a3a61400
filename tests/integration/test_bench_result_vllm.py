"""``bench_result.json`` against vLLM itself (the CPU build installed here): the file
``vllm bench serve --save-result --save-detailed`` writes for the same load on the same server
has the same keys and value types; vLLM's own metric code, fed our records, computes the same
numbers; and vLLM's sweep readers load our file as they load theirs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have_module, require
from tests.integration import harnesscli
from tests.integration.servers import sim_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Runs in a child process: vLLM's import is heavy and leaves threads behind.
VLLM_SIDE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
    from vllm.benchmarks.serve import add_cli_args, calculate_metrics, main
    from vllm.benchmarks.sweep.plot import _convert_inf_nan_strings
    from vllm.benchmarks.sweep.plot_pareto import _prepare_records
    from vllm.benchmarks.sweep.serve_workload import _estimate_workload_value
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    task = json.loads(sys.argv[1])
    out = {}
    if task.get("bench_args"):
        parser = FlexibleArgumentParser()
        add_cli_args(parser)
        main(parser.parse_args(task["bench_args"]))
    # vLLM's metrics from our records.
    outputs = []
    for line in Path(task["records"]).read_text().splitlines():
        r = json.loads(line)
        ok = r["status"] == "ok"
        outputs.append(RequestFuncOutput(
            success=ok,
            latency=r["e2e_ms"] / 1000 if ok else 0.0,
            output_tokens=r["output_tokens"] if ok else 0,
            ttft=(r["ttft_ms"] or 0.0) / 1000,
            itl=[g / 1000 for g in r["itl_ms"]],
            prompt_len=r["prompt_tokens"],
            start_time=r["sent_at"],
        ))
    metrics, output_lens = calculate_metrics(
        input_requests=[], outputs=outputs, dur_s=task["duration"], tokenizer=None,
        selected_percentiles=task["percentiles"], goodput_config_dict=task["goodput"],
    )
    out["metrics"] = {k: v for k, v in vars(metrics).items()}
    out["total_output"] = sum(output_lens)
    # vLLM's sweep readers on each file.
    for name, path in task["files"].items():
        data = json.loads(Path(path).read_text())
        (converted,) = _convert_inf_nan_strings([data])
        prepared, skipped = _prepare_records(
            [converted], user_count_var="max_concurrency", gpu_count_var=None
        )
        out[name] = {
            "rate_estimate": _estimate_workload_value(data, "request_rate"),
            "concurrency_estimate": _estimate_workload_value(data, "max_concurrency"),
            "tokens_per_user": prepared[0]["tokens_per_user"],
            "skipped": skipped,
        }
    print("RESULT " + json.dumps(out, default=float))
    """
)


def vllm_side(tmp_path: Path, task: dict[str, Any]) -> dict[str, Any]:
    script = tmp_path / "vllm_side.py"
    script.write_text(VLLM_SIDE)
    res = subprocess.run(
        [sys.executable, str(script), json.dumps(task)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    (line,) = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    return dict(json.loads(line[len("RESULT ") :]))


def kinds(value: Any) -> Any:
    """The JSON shape of a value: its type, and its elements' for lists."""
    if isinstance(value, list):
        return ("list", sorted({repr(kinds(v)) for v in value}))
    return type(value).__name__


def test_bench_result_matches_vllm_bench_serve(tmp_path: Path, tiny_model_dir: Path) -> None:
    require(have_module("vllm"), "vllm (CPU build)")
    runs = tmp_path / "runs"
    ours_args = [
        "--api", "completions", "--prompt-tokens", "8", "--max-tokens", "6", "--ignore-eos",
        "--max-concurrency", "2", "--num-prompts", "12", "--goodput", "ttft:40", "tpot:4",
        "--metric-percentiles", "50,90,99", "--tokenizer", str(tiny_model_dir),
    ]  # fmt: skip
    with sim_server("--ttft-ms", "5", "--itl-ms", "3", "--model-name", "tiny") as (url, _):
        res = harnesscli.run(runs, "load", "--no-progress", "--base-url", url, *ours_args)
        assert res.returncode == 0, res.stderr
        (run,) = list(runs.iterdir())
        summary = json.loads((run / "summary.json").read_text())
        bench_args = [
            "--base-url", url, "--model", "tiny", "--tokenizer", str(tiny_model_dir),
            "--backend", "openai", "--endpoint", "/v1/completions",
            "--dataset-name", "random", "--random-input-len", "8", "--random-output-len", "6",
            "--ignore-eos", "--num-prompts", "12", "--max-concurrency", "2",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--goodput", "ttft:40", "tpot:4", "--temperature", "0",
            "--save-result", "--save-detailed", "--result-dir", str(tmp_path),
            "--result-filename", "vllm.json", "--disable-tqdm",
        ]  # fmt: skip
        result = vllm_side(
            tmp_path,
            {
                "bench_args": bench_args,
                "records": str(run / "requests.jsonl"),
                "duration": summary["run"]["elapsed_s"],
                "percentiles": [50.0, 90.0, 99.0],
                "goodput": {"ttft": 40.0, "tpot": 4.0},
                "files": {"ours": str(run / "bench_result.json")},
            },
        )
    ours = json.loads((run / "bench_result.json").read_text())
    theirs = json.loads((tmp_path / "vllm.json").read_text())

    # Same keys (generated_texts aside: the load keeps no answers), same shapes, same order.
    assert set(theirs) - set(ours) == {"generated_texts"}
    assert set(ours) - set(theirs) == set()
    assert list(ours) == [k for k in theirs if k != "generated_texts"]
    for key in ours:
        if key in ("date", "tokenizer_id", "label"):
            continue
        assert kinds(ours[key]) == kinds(theirs[key]), key
    for key in ("endpoint_type", "backend", "request_rate", "burstiness", "max_concurrency",
                "num_prompts", "completed", "failed", "total_output_tokens"):  # fmt: skip
        assert ours[key] == theirs[key], key
    assert [len(x) for x in ours["itls"]] == [len(x) for x in theirs["itls"]] == [5] * 12

    # vLLM's calculate_metrics on our records gives our numbers.
    m = result["metrics"]
    assert (ours["completed"], ours["failed"]) == (m["completed"], m["failed"])
    assert ours["total_input_tokens"] == m["total_input"]
    assert ours["total_output_tokens"] == m["total_output"] == result["total_output"]
    for key in ("request_throughput", "request_goodput", "output_throughput",
                "total_token_throughput", "max_output_tokens_per_s"):  # fmt: skip
        assert ours[key] == pytest.approx(m[key], rel=1e-9), key
    assert ours["max_concurrent_requests"] == m["max_concurrent_requests"]
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std"):
            key = f"{stat}_{metric}_ms"
            assert ours[key] == pytest.approx(m[key], rel=1e-9, abs=1e-9), key
        for p, value in m[f"percentiles_{metric}_ms"]:
            key = f"p{int(p)}_{metric}_ms"
            assert ours[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key

    # vLLM's sweep readers load our file.
    read = result["ours"]
    assert read["rate_estimate"] == pytest.approx(ours["request_throughput"])
    assert read["concurrency_estimate"] == pytest.approx(
        ours["request_throughput"] * ours["mean_e2el_ms"] / 1000
    )
    assert read["tokens_per_user"] == pytest.approx(ours["output_throughput"] / 2)
    assert read["skipped"] == 0

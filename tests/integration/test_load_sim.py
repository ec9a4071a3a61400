"""``harness load`` end to end against the simulator (a real server process)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.load.factory import Overrides, RequestFactory
from harness.load.inflight import read_inflight
from harness.load.runner import LoadConfig, LoadRunner
from harness.load.tokenizer import WordTokenizer
from harness.load.workload import load_workload
from harness.spec import LaunchSpec, LoadLimits
from tests.conftest import have_module, require
from tests.integration.harnesscli import finish, only_dir, run, start, wait_for
from tests.integration.servers import sim_server

pytestmark = pytest.mark.integration

SUMMARY_KEYS = {"requests", "throughput", "rate", "latency_ms", "windows", "goodput"}


def harness_load(runs: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run(runs, "load", "--no-progress", *args, timeout=timeout)


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "requests.jsonl").read_text().splitlines()]


def test_closed_loop_2000_requests(runs_dir: Path) -> None:
    with sim_server("--ttft-ms", "0", "--itl-ms", "0") as (url, _):
        res = harness_load(
            runs_dir,
            "--url",
            url,
            "--workload",
            "chat-short",
            "--prompt-tokens",
            "32",
            "--max-tokens",
            "16",
            "--concurrency",
            "64",
            "--requests",
            "2000",
        )
    assert res.returncode == 0, res.stderr
    run = only_dir(runs_dir)
    recs = records(run)
    assert len(recs) == 2000
    assert sorted(r["index"] for r in recs) == list(range(2000))
    assert all(r["status"] == "ok" and r["output_tokens"] == 16 for r in recs)
    assert all(r["prompt_tokens"] == 32 for r in recs)  # the sim counts words; so do we here
    assert all(r["request_id"].startswith("chatcmpl-sim") for r in recs)
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert summary["requests"] == {
        "completed": 2000,
        "failed": 0,
        "stalled": 0,
        "aborted": 0,
        "sent": 2000,
    }
    for metric in ("ttft", "itl", "tpot", "e2e"):
        assert set(summary["latency_ms"][metric]) == {"mean", "p50", "p90", "p99", "p999"}
    assert summary["rate"]["requested"] is None
    assert summary["rate"]["achieved"] == summary["throughput"]["requests_per_s"] > 0
    assert summary["throughput"]["output_tokens_per_s"] == pytest.approx(
        16 * summary["throughput"]["requests_per_s"], rel=1e-3
    )
    assert sum(w["completed"] for w in summary["windows"]) == 2000


def test_stalled_requests_are_recorded_and_the_run_goes_on(runs_dir: Path) -> None:
    with sim_server(
        "--ttft-ms", "1", "--itl-ms", "2", "--seed", "5", "--fault", "stall:p=0.05,after=3"
    ) as (url, _):
        res = harness_load(
            runs_dir,
            "--url",
            url,
            "-w",
            "chat-short",
            "--max-tokens",
            "8",
            "-c",
            "16",
            "--duration",
            "3",
            "--stall-after",
            "1",
            "--fail-on-stall",
        )
    assert res.returncode == 1 and "stalled" in res.stderr  # --fail-on-stall
    run = only_dir(runs_dir)
    recs = records(run)
    stalled = [r for r in recs if r["status"] == "stalled"]
    ok = [r for r in recs if r["status"] == "ok"]
    assert stalled and ok
    for r in stalled:
        assert r["error"] == "token_stall"  # ended by the stall clock, not by the deadline
        assert r["output_tokens"] == 3 and r["last_token_at"] is not None
        assert r["e2e_ms"] is None
    summary = json.loads((run / "summary.json").read_text())
    assert summary["requests"]["stalled"] == len(stalled)
    assert (
        summary["requests"]["completed"] + len(stalled) == summary["requests"]["sent"] == len(recs)
    )
    assert summary["run"]["stop_reason"] == "duration reached"


@pytest.mark.parametrize("http", ["lean", "httpx", "aiohttp"])
def test_transports_measure_the_same_things(runs_dir: Path, http: str) -> None:
    if http == "aiohttp":
        require(have_module("httpx_aiohttp"), "httpx-aiohttp (the dev extra installs it)")
    with sim_server("--ttft-ms", "1", "--itl-ms", "1") as (url, _):
        res = harness_load(
            runs_dir,
            "--url",
            url,
            "--api",
            "completions",
            "--max-tokens",
            "5",
            "-c",
            "4",
            "-n",
            "40",
            "--http",
            http,
            "--seed",
            "9",
        )
    assert res.returncode == 0, res.stderr
    recs = records(only_dir(runs_dir))
    assert len(recs) == 40
    assert all(
        r["status"] == "ok" and r["output_tokens"] == 5 and len(r["itl_ms"]) == 4 for r in recs
    )
    assert all(r["ttft_ms"] > 0 and r["request_id"].startswith("cmpl-sim") for r in recs)


def test_open_loop_rate_and_run_directory(runs_dir: Path) -> None:
    with sim_server("--ttft-ms", "1", "--itl-ms", "1", "--model-name", "served") as (url, _):
        port = int(url.rsplit(":", 1)[1])
        run = runs_dir / "r1"
        run.mkdir()
        spec = LaunchSpec(
            run_id="r1",
            run_dir=str(run),
            engine="sim",
            model="served",
            tp=1,
            profiles=["vlm-safe"],
            runtime="local",
            host="127.0.0.1",
            port=port,
            argv=["x"],
            env={},
            health_url=url + "/health",
            base_url=url,
            served_model_name="served",
            load=LoadLimits(max_image_pixels=50_000),
        )
        (run / "launch_spec.json").write_text(spec.to_json())
        res = harness_load(
            runs_dir,
            "--run",
            "r1",
            "-w",
            "vlm-mixed",
            "--rate",
            "20",
            "--arrival",
            "constant",
            "-n",
            "10",
            "--max-tokens",
            "4",
        )
    assert res.returncode == 0, res.stderr
    recs = records(run)
    assert len(recs) == 10 and all(r["status"] == "ok" for r in recs)
    assert sorted(r["scheduled_s"] for r in recs) == pytest.approx([i / 20 for i in range(10)])
    images = [img for r in recs for img in r["images"]]
    assert images and all(i["width"] * i["height"] <= 50_000 for i in images)
    assert any("requested" in i for i in images)  # large ones were scaled down
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rate"]["requested"] == 20.0
    assert (
        summary["rate"]["achieved"] is not None
        and summary["rate"]["send_lag_ms"]["p50"] is not None
    )
    assert summary["run"]["max_image_pixels"] == 50_000


def test_error_budget_stops_the_run(runs_dir: Path) -> None:
    with sim_server("--fault", "http-error:p=1,status=500") as (url, _):
        res = harness_load(
            runs_dir, "--url", url, "-c", "2", "--duration", "60", "--error-budget", "5"
        )
    assert res.returncode == 1 and "error budget" in res.stderr
    recs = records(only_dir(runs_dir))
    assert all(
        r["status"] == "failed" and r["error"] == "http_500:InternalServerError" for r in recs
    )
    assert 5 <= len(recs) <= 7


def test_bad_input_and_unreachable_server(runs_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "w.yaml"
    bad.write_text("api: chat\nmax_tokenz: 3\n")
    res = harness_load(
        runs_dir, "--url", "http://127.0.0.1:9", "-w", str(bad), "-c", "1", "-n", "1"
    )
    assert res.returncode == 2
    assert f"{bad}:2: max_tokenz: unknown key" in res.stderr and "Traceback" not in res.stderr
    res = harness_load(runs_dir, "-w", "chat-short", "-c", "1", "-n", "1")
    assert res.returncode == 2 and "--url" in res.stderr
    res = harness_load(runs_dir, "--url", "http://127.0.0.1:9", "-c", "1", "-n", "1")
    assert res.returncode == 3 and "cannot reach" in res.stderr and "Traceback" not in res.stderr
    assert list(runs_dir.iterdir()) == []  # nothing recorded, nothing left behind


@pytest.mark.parametrize(
    "signals", [[signal.SIGINT], [signal.SIGTERM], [signal.SIGINT, signal.SIGINT]]
)
def test_ctrl_c_keeps_every_record_and_writes_the_summary(
    runs_dir: Path, signals: list[signal.Signals]
) -> None:
    """Ctrl-C (once or twice) or SIGTERM: every record kept, summary.json and the result files
    written, exit 130 (docs/load.md)."""
    with sim_server("--ttft-ms", "1", "--itl-ms", "20") as (url, _):
        # The load would run for 10 minutes: the process_trees fixture stops it if the test
        # fails before the signal does.
        proc = start(
            runs_dir, "load", "--no-progress", "--url", url, "-c", "8", "--duration", "600",
            "--max-tokens", "50",
        )  # fmt: skip

        def recorded() -> bool:
            assert proc.poll() is None, proc.communicate()
            return bool(list(runs_dir.glob("*/requests.jsonl"))) and bool(
                records(only_dir(runs_dir))
            )

        wait_for(recorded, 60, "the first finished request")
        for sig in signals:
            os.kill(proc.pid, sig)
        res = finish(proc, 60)
    assert res.returncode == 130, res.stderr
    run = only_dir(runs_dir)
    summary = json.loads((run / "summary.json").read_text())
    recs = records(run)
    assert summary["run"]["stop_reason"] == "interrupted"
    assert summary["requests"]["sent"] == len(recs)
    assert {r["status"] for r in recs} <= {"ok", "aborted"}
    assert summary["requests"]["aborted"] >= 1
    bench = json.loads((run / "bench_result.json").read_text())
    assert bench["completed"] + bench["failed"] == len(recs)
    assert not (run / "inflight.json").exists()


class _StallAfterTwoTokens(BaseHTTPRequestHandler):
    """A server that keeps what it was sent: every request body is recorded, two tokens are
    streamed back, then the answer stalls until the test releases it (a hang in mid-stream)."""

    protocol_version = "HTTP/1.1"
    received: list[dict[str, Any]]
    release: threading.Event

    def do_GET(self) -> None:  # /v1/models
        self._send(200, json.dumps({"data": [{"id": "capture-model"}]}).encode())

    def do_POST(self) -> None:
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for token in ("a", "b"):
            delta = {"index": 0, "delta": {"content": token}, "finish_reason": None}
            self._chunk(b"data: " + json.dumps({"id": "c", "choices": [delta]}).encode() + b"\n\n")
        self.release.wait(120)
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_inflight_requests_have_payloads_for_replay(tmp_path: Path) -> None:
    """The requests in flight, as the runner reports them and as it publishes them for the
    watchdog (inflight.json), carry the bodies the server received: exact, for replay."""
    seen: list[dict[str, Any]] = []
    received: list[dict[str, Any]] = []
    release = threading.Event()
    handler = type("Handler", (_StallAfterTwoTokens,), {"received": received, "release": release})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    async def main() -> Any:
        cfg = LoadConfig(
            workload_name="chat-short", concurrency=3, requests=3, stall_after_s=30, max_tokens=10
        )
        runner = LoadRunner(cfg, base_url=url, out_dir=tmp_path, on_stall=seen.append)
        task = asyncio.create_task(runner.run())
        while len(runner.inflight()) < 3 or any(f["tokens_so_far"] < 2 for f in runner.inflight()):
            await asyncio.sleep(0.05)
        inflight = runner.inflight()
        # What the watchdog reads: the same requests, published to inflight.json.
        published: list[dict[str, Any]] = []
        while {p["index"] for p in published if p["tokens_so_far"] >= 2} != {0, 1, 2}:
            await asyncio.sleep(0.05)
            published = read_inflight(tmp_path)
        runner.stop("test", hard=True)
        return inflight, published, await task

    try:
        inflight, published, summary = asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert {f["index"] for f in inflight} == {0, 1, 2}
    assert all(f["last_token_at"] is not None for f in inflight)
    # The payloads are the exact requests the server received ...
    as_sent = sorted(json.dumps(body, sort_keys=True) for body in received)
    assert len(as_sent) == 3
    # ... and request i of the seed, rebuilt independently.
    factory = RequestFactory(
        load_workload("chat-short")[0],
        model="capture-model",
        seed=0,
        tokenizer=WordTokenizer(),
        overrides=Overrides(max_tokens=10),
    )
    for items in (inflight, published):
        assert {f["index"] for f in items} == {0, 1, 2}
        assert sorted(json.dumps(f["body"], sort_keys=True) for f in items) == as_sent
        for f in items:
            assert f["body"] == factory.build(f["index"]).body
            assert f["path"] == "/v1/chat/completions" and f["tokens_so_far"] >= 2
    assert summary["requests"]["aborted"] == 3
    assert not (tmp_path / "inflight.json").exists()  # removed at the end of the run


def test_stall_callback(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    cfg = LoadConfig(
        workload_name="chat-short", concurrency=2, requests=2, stall_after_s=0.5, max_tokens=10
    )
    with sim_server("--ttft-ms", "1", "--itl-ms", "1", "--fault", "stall:p=1,after=2") as (url, _):
        runner = LoadRunner(cfg, base_url=url, out_dir=tmp_path, on_stall=seen.append)
        summary = asyncio.run(asyncio.wait_for(runner.run(), 120))
    assert summary["requests"]["stalled"] == 2
    assert sorted(r["index"] for r in seen) == [0, 1]


def test_lean_shortcut_sends_and_reads_what_httpx_does() -> None:
    """``LeanClient.stream_post`` (the load's hot path) against httpx's own request path on
    the same client: same status, headers, body bytes; streamed, plain JSON and an error."""
    from harness.load.client import make_client

    chat = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}
    bodies = [
        {**chat, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}},
        {**chat, "max_tokens": 3},
        {**chat, "max_tokens": -1},  # HTTP 400
    ]

    async def both(url: str) -> list[tuple[Any, ...]]:
        client = make_client(url, stall_after_s=30, max_connections=4)
        from harness.load.transport import LeanClient

        assert isinstance(client, LeanClient) and client.lean_for("/v1/chat/completions")
        out = []
        try:
            for body in bodies:
                content = json.dumps(body).encode()
                async with client.stream_post("/v1/chat/completions", content) as lean:
                    lean_body = (
                        b"".join([p async for p in lean.aiter_raw()])
                        if body.get("stream")
                        else await lean.aread()
                    )
                    lean_id = lean.headers.get("X-Request-ID")
                async with client.stream("POST", "/v1/chat/completions", content=content) as ref:
                    ref_body = await ref.aread()
                    ref_id = ref.headers.get("x-request-id")
                out.append(
                    (lean.status_code, ref.status_code, lean_body, ref_body, lean_id, ref_id)
                )
        finally:
            await client.aclose()
        return out

    with sim_server("--seed", "3") as (url, _):
        results = asyncio.run(both(url))
    statuses = [(a, b) for a, b, *_ in results]
    assert statuses == [(200, 200), (200, 200), (400, 400)]
    for _, _, lean_body, ref_body, lean_id, ref_id in results:
        # Request ids differ per request; the rest of the body is the same shape.
        assert lean_body.count(b"data:") == ref_body.count(b"data:")
        assert len(lean_body) == len(ref_body)
        assert (lean_id is None) == (ref_id is None)
    assert results[0][2].endswith(b"data: [DONE]\n\n") and b'"completion_tokens":4' in results[0][2]
    assert b'"completion_tokens":3' in results[1][2]


def test_vllm_bench_serve_option_names_and_result_files(runs_dir: Path) -> None:
    """vllm bench serve's names as aliases; bench_result.json and requests.csv next to
    summary.json, with vLLM's keys for what was asked."""
    with sim_server("--ttft-ms", "1", "--itl-ms", "1") as (url, _):
        res = harness_load(
            runs_dir,
            "--base-url",
            url,
            "--request-rate",
            "inf",
            "--max-concurrency",
            "4",
            "--num-prompts",
            "24",
            "--max-tokens",
            "6",
            "--goodput",
            "ttft:5000",
            "tpot:1000",
            "--metric-percentiles",
            "50,90,99.9",
        )
    assert res.returncode == 0, res.stderr
    run = only_dir(runs_dir)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run"]["mode"] == "closed" and summary["run"]["concurrency"] == 4
    assert summary["requests"]["sent"] == 24
    assert summary["goodput"]["slo"] == {"ttft_ms": 5000.0, "tpot_ms": 1000.0, "e2e_ms": None}
    bench = json.loads((run / "bench_result.json").read_text())
    assert (bench["request_rate"], bench["max_concurrency"], bench["num_prompts"]) == ("inf", 4, 24)
    assert bench["backend"] == "openai-chat" and bench["completed"] == 24
    assert bench["request_goodput"] == pytest.approx(summary["goodput"]["requests_per_s"], rel=0.01)
    assert {"p50_ttft_ms", "p90_tpot_ms", "p99.9_itl_ms", "p90_e2el_ms"} <= set(bench)
    assert "p99_ttft_ms" not in bench
    assert [len(bench[k]) for k in ("input_lens", "ttfts", "itls", "errors")] == [24] * 4
    assert all(len(itl) == 5 for itl in bench["itls"])
    with open(run / "requests.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(r["index"]) for r in rows) == list(range(24))
    assert {r["status"] for r in rows} == {"ok"} and {r["output_tokens"] for r in rows} == {"6"}
    # --request-rate inf without a cap: all --num-prompts at once, as vllm bench serve does.
    with sim_server("--ttft-ms", "1", "--itl-ms", "1") as (url, _):
        res = harness_load(runs_dir, "--url", url, "--request-rate", "inf", "-n", "5")
    assert res.returncode == 0, res.stderr
    (second,) = [p for p in runs_dir.iterdir() if p != run]
    assert json.loads((second / "summary.json").read_text())["run"]["concurrency"] == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metric-percentiles", "50,abc"], "--metric-percentiles"),
        (["--goodput", "itl:5"], "--goodput"),
        (["--goodput", "ttft:5", "--slo-ttft-ms", "6"], "contradicts"),
        (["--rate", "0"], "--rate must be positive"),
        (["-c", "0"], "--concurrency must be at least 1"),
        (["--rate", "2", "--arrival", "poisson", "--burstiness", "0.5"], "gamma"),
        (["--request-rate", "inf", "--duration", "5"], "--max-concurrency"),
        (["--url", "127.0.0.1:8000"], "must start with http"),
    ],
)
def test_bad_flags_leave_no_run_directory(runs_dir: Path, args: list[str], message: str) -> None:
    base = [] if "--duration" in args else ["-n", "1"]
    base += [] if "--url" in args else ["--url", "http://127.0.0.1:9"]
    if not any(a in args for a in ("--rate", "--request-rate", "-c")):
        base += ["-c", "1"]
    res = harness_load(runs_dir, *base, *args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert list(runs_dir.iterdir()) == []


def test_output_that_is_not_a_terminal_is_never_wrapped(tmp_path: Path) -> None:
    runs = tmp_path / ("a-long-directory-name-" * 4) / "runs"  # paths well past 80 columns
    with sim_server("--ttft-ms", "1", "--itl-ms", "1") as (url, _):
        res = harness_load(runs, "--url", url, "-c", "2", "-n", "4", "--max-tokens", "3")
    assert res.returncode == 0, res.stderr
    run = only_dir(runs)
    lines = res.stdout.splitlines()
    assert f"records: {run / 'requests.jsonl'}" in lines
    assert f"summary: {run / 'summary.json'}" in lines
    (rate_line,) = [line for line in lines if line.startswith("throughput")]
    assert rate_line.endswith("; closed loop, concurrency 2") and "None" not in res.stdout


def test_a_concurrency_cap_that_holds_the_rate_back_is_reported(runs_dir: Path) -> None:
    # Each request takes about 0.5 s; one at a time cannot reach 20/s.
    with sim_server("--ttft-ms", "1", "--itl-ms", "25") as (url, _):
        res = harness_load(
            runs_dir, "--url", url, "--rate", "20", "-c", "1", "-n", "6", "--max-tokens", "20"
        )
    assert res.returncode == 0, res.stderr
    summary = json.loads((only_dir(runs_dir) / "summary.json").read_text())
    capped = summary["rate"]["capped_by_concurrency"]
    assert capped["concurrency"] == 1 and capped["waited"] >= 4
    assert any("--concurrency 1 capped the rate" in n for n in summary["notes"])
    assert "capped by --concurrency 1" in res.stdout
    assert summary["rate"]["achieved"] < 5

"""Benchmark: what image size costs on the real vLLM CPU server, with and without ``vlm-safe``.

For each configuration (TP=1/TP=2, with or without the ``vlm-safe`` profile) it starts
``harness serve --detach --no-watch --profile eager[,vlm-safe]`` on the tiny VLM
(``harness tiny-model DIR --kind vlm``), then sends one streamed chat request per image size, one
at a time, and records the prompt tokens the server reports, the time to first token, the
end-to-end time, the status, and the server's resident memory (the sum over its processes, and
the largest single process, sampled every 50 ms with psutil) before and at its peak during the
request. Then ``harness load --run RUN -w vlm-mixed`` and its summary. With ``--watchdog S``
it also serves TP=1 *watched* (``--stall-after S``), without and with ``vlm-safe``, and sends
the 12 MP photo: does the watchdog take the server's silence for a hang, and what does the
incident say?

    .venv/bin/python benchmarks/vlm_limits.py --model .cache/tiny-vlm \\
        [--configs tp1,tp1-safe,tp2,tp2-safe] [--load-requests 8] [--watchdog 20] \\
        [--out benchmarks/results/vlm_limits.json]

``image_bytes`` is the length of the request's ``data:`` URL (the base64 JPEG as sent).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.load.images import data_url, make_image  # noqa: E402

#: (label, width, height): what users send, smallest first; "at cap" is the image the server
#: scales a 12 MP 4:3 photo to under vlm-safe (41×30 tokens).
SIZES = [
    ("thumbnail", 224, 224),
    ("web image", 640, 480),
    ("at cap", 41 * 28, 30 * 28),
    ("screenshot", 1920, 1080),
    ("document", 2480, 3508),
    ("phone photo 12 MP", 4000, 3000),
]
CONFIGS = {
    "tp1": (1, False),
    "tp1-safe": (1, True),
    "tp2": (2, False),
    "tp2-safe": (2, True),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def harness(runs: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", "--runs-dir", str(runs), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


class MemorySampler:
    """Peak RSS of a process tree (sum, and the largest process), sampled in a thread."""

    def __init__(self, root_pid: int, interval_s: float = 0.05) -> None:
        self.root = psutil.Process(root_pid)
        self.interval_s = interval_s
        self.peak_sum = 0
        self.peak_one = 0
        self.peak_one_name = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int, str]:
        total, largest, name = 0, 0, ""
        for p in [self.root, *self.root.children(recursive=True)]:
            try:
                rss = p.memory_info().rss
                pname = p.name()
            except psutil.Error:
                continue
            total += rss
            if rss > largest:
                largest, name = rss, pname
        return total, largest, name

    def _run(self) -> None:
        while not self._stop.is_set():
            total, largest, name = self.sample()
            self.peak_sum = max(self.peak_sum, total)
            if largest > self.peak_one:
                self.peak_one, self.peak_one_name = largest, name
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def ask(base: str, model: str, width: int, height: int, seed: int) -> dict[str, Any]:
    """One streamed chat request with one JPEG image; what the client saw."""
    url = data_url(make_image(width, height, "jpeg", (seed, width, height)), "jpeg")
    body = {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is in the image"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    out: dict[str, Any] = {"status": None, "ttft_s": None, "prompt_tokens": None, "error": None}
    start = time.perf_counter()
    try:
        with httpx.stream(
            "POST", f"{base}/v1/chat/completions", json=body, timeout=1800
        ) as response:
            out["status"] = response.status_code
            if response.status_code != 200:
                out["error"] = response.read().decode(errors="replace")[:300]
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if out["ttft_s"] is None and any(
                    (c.get("delta") or {}).get("content") for c in event.get("choices") or []
                ):
                    out["ttft_s"] = round(time.perf_counter() - start, 3)
                if event.get("usage"):
                    out["prompt_tokens"] = event["usage"]["prompt_tokens"]
    except httpx.HTTPError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["e2e_s"] = round(time.perf_counter() - start, 3)
    out["image_bytes"] = len(url)
    return out


def serve(
    runs: Path, model: str, tp: int, safe: bool, *, stall_after: float | None = None
) -> dict[str, Any]:
    profiles = "eager,vlm-safe" if safe else "eager"
    args = ["serve", "--model", model, "--tp", str(tp), "--profile", profiles]
    args += ["--port", str(free_port()), "--detach"]
    if stall_after is None:
        args.append("--no-watch")
    else:
        args += ["--stall-after", f"{stall_after:g}"]
    start = time.monotonic()
    done = harness(runs, *args)
    if done.returncode != 0:
        raise SystemExit(f"harness serve failed: {done.stderr[-2000:]}")
    run_dir = max((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    spec: dict[str, Any] = json.loads((run_dir / "launch_spec.json").read_text())
    state = json.loads((run_dir / "state.json").read_text())
    spec["_ready_s"] = round(time.monotonic() - start, 1)
    spec["_pid"] = state["pid"]
    spec["_run_dir"] = str(run_dir)
    return spec


def measure_config(
    runs: Path, model: str, name: str, load_requests: int, sizes: list[tuple[str, int, int]]
) -> dict[str, Any]:
    tp, safe = CONFIGS[name]
    spec = serve(runs, model, tp, safe)
    print(f"{name}: ready in {spec['_ready_s']} s", flush=True)
    result: dict[str, Any] = {"config": name, "tp": tp, "vlm_safe": safe}
    result["ready_s"] = spec["_ready_s"]
    result["warnings"] = spec["warnings"]
    try:
        base, served = spec["base_url"], spec["served_model_name"]
        ask(base, served, 224, 224, seed=99)  # warm-up, not recorded
        rows = []
        for label, width, height in sizes:
            sampler = MemorySampler(spec["_pid"])
            before, _, _ = sampler.sample()
            with sampler:
                row = ask(base, served, width, height, seed=0)
            row |= {
                "image": label,
                "width": width,
                "height": height,
                "rss_before_mib": round(before / 2**20),
                "rss_peak_mib": round(sampler.peak_sum / 2**20),
                "largest_process_peak_mib": round(sampler.peak_one / 2**20),
                "largest_process": sampler.peak_one_name,
            }
            rows.append(row)
            print(f"  {label} {width}x{height}: {row}", flush=True)
        result["images"] = rows
        if load_requests:
            started = time.monotonic()
            done = harness(
                runs, "load", "--run", spec["run_id"], "-w", "vlm-mixed", "-n",
                str(load_requests), "-c", "2", "--max-tokens", "16", "--no-progress", "--json",
                timeout=3600,
            )  # fmt: skip
            summary = json.loads(done.stdout) if done.returncode == 0 else None
            records = [
                json.loads(line)
                for line in (Path(spec["_run_dir"]) / "requests.jsonl").read_text().splitlines()
            ]
            result["load"] = {
                "exit": done.returncode,
                "wall_s": round(time.monotonic() - started, 1),
                "requests": summary["requests"] if summary else None,
                "latency_ms": {
                    k: summary["latency_ms"][k] for k in ("ttft", "e2e")
                } if summary else None,
                "images": [
                    [i["width"], i["height"], i.get("requested")] for r in records
                    for i in r.get("images", [])
                ],
                "prompt_tokens": [r["prompt_tokens"] for r in records],
                "statuses": [r["status"] for r in records],
                "stderr_tail": done.stderr[-500:] if done.returncode else "",
            }  # fmt: skip
            print(f"  load: {result['load']['requests']} in {result['load']['wall_s']} s")
    finally:
        harness(runs, "down", spec["run_id"], timeout=300)
    return result


def watchdog_experiment(runs: Path, model: str, safe: bool, stall_after: float) -> dict[str, Any]:
    """Serve TP=1 watched with ``--stall-after``; send the 12 MP photo."""
    spec = serve(runs, model, 1, safe, stall_after=stall_after)
    out: dict[str, Any] = {"vlm_safe": safe, "ready_s": spec["_ready_s"], "watch": spec["watch"]}
    try:
        base, served = spec["base_url"], spec["served_model_name"]
        ask(base, served, 224, 224, seed=99)
        out["request"] = ask(base, served, 4000, 3000, seed=0)
        print(f"watchdog, vlm-safe={safe}: {out['request']}", flush=True)
        # The watcher captures (two py-spy rounds) after it fires; give it time to finish.
        time.sleep(15)
        run_dir = Path(spec["_run_dir"])
        incidents = []
        for inc in sorted(run_dir.glob("incidents/*/incident.json")):
            data = json.loads(inc.read_text())
            summary = (inc.parent / "summary.md").read_text().splitlines()[:2]
            waits = {p.get("role"): p.get("wait_frame") for p in data.get("processes", [])}
            incidents.append(
                {
                    "kind": data.get("kind"),
                    "rule": data.get("rule"),
                    "detected_at": data.get("detected_at"),
                    "summary": summary,
                    "wait_frames": waits,
                }
            )
        out["incidents"] = incidents
        log = run_dir / "watchdog.log"
        out["watchdog_log_tail"] = log.read_text().splitlines()[-8:] if log.exists() else []
    finally:
        harness(runs, "down", spec["run_id"], timeout=300)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / ".cache" / "tiny-vlm"))
    ap.add_argument("--configs", default="tp1,tp1-safe,tp2,tp2-safe")
    ap.add_argument("--load-requests", type=int, default=8)
    ap.add_argument("--watchdog", type=float, metavar="STALL_AFTER_S")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "vlm_limits.json"))
    args = ap.parse_args()
    if not (Path(args.model) / "config.json").exists():
        done = harness(Path(tempfile.gettempdir()), "tiny-model", args.model, "--kind", "vlm")
        if done.returncode != 0:
            raise SystemExit(done.stderr)
    runs = Path(tempfile.mkdtemp(prefix="vlm-bench-")) / "runs"
    runs.mkdir()
    results: dict[str, Any] = {
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average": list(psutil.getloadavg()),
        "cpus": psutil.cpu_count(),
        "configs": [],
    }
    for name in filter(None, args.configs.split(",")):
        results["configs"].append(measure_config(runs, args.model, name, args.load_requests, SIZES))
    if args.watchdog:
        results["watchdog"] = [
            watchdog_experiment(runs, args.model, safe, args.watchdog) for safe in (False, True)
        ]
    results["load_average_end"] = list(psutil.getloadavg())
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

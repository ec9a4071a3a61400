"""A secret given as an engine flag: in effect, yet in no file under runs/ and in no command line.

The real vLLM CPU server (tiny model, TP=1, eager) is started with
``--engine-arg '--api-key ...'`` and ``--engine-arg '--hf-token ...'`` under
``harness serve --detach``: a request without the key gets 401, with it 200; then ``harness dump``
captures it, ``harness down`` stops it, and every file under runs/ (launch_spec.json,
state.json, server.log, watchdog.log, the incident bundle) and every process's
``/proc/<pid>/cmdline`` is searched for the secrets.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from harness.redact import MASK
from tests.conftest import free_port, have_module, require
from tests.integration.harnesscli import only_dir, run, stop_all_under

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = f"sk-harness-flag-{uuid.uuid4().hex}"
HF_TOKEN = f"hf_flagsecret{uuid.uuid4().hex}"


def _server_processes(state: dict[str, object]) -> list[psutil.Process]:
    """The server's process tree and the detached watcher."""
    procs: list[psutil.Process] = []
    for pid in (state.get("pid"), (state.get("watcher") or {}).get("pid")):  # type: ignore[union-attr]
        if isinstance(pid, int) and psutil.pid_exists(pid):
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
    return procs


def test_api_key_flag_is_in_effect_and_written_nowhere(
    tiny_model_dir: Path, campaign_runs: Path
) -> None:
    require(have_module("vllm"), "vLLM CPU build (make install-vllm)")
    runs = campaign_runs
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        served = run(
            runs,
            "serve",
            "--engine",
            "vllm",
            "--model",
            str(tiny_model_dir),
            "--tp",
            "1",
            "--profile",
            "default,eager",
            "--port",
            str(port),
            "--engine-arg",
            f"--api-key {API_KEY}",
            "--engine-arg",
            f"--hf-token {HF_TOKEN}",
            "--detach",
            timeout=600,
        )
        assert served.returncode == 0, served.stderr[-3000:]
        run_dir = only_dir(runs)
        state = json.loads((run_dir / "state.json").read_text())
        procs = _server_processes(state)
        assert len(procs) >= 2, procs  # the API server (and EngineCore), the watcher

        # In effect: vLLM enforces the key it read from VLLM_API_KEY.
        model = json.loads((run_dir / "launch_spec.json").read_text())["served_model_name"]
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        denied = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
        assert denied.status_code == 401, denied.text
        auth = {"Authorization": f"Bearer {API_KEY}"}
        allowed = httpx.post(f"{base}/v1/chat/completions", json=body, headers=auth, timeout=300)
        assert allowed.status_code == 200, allowed.text
        # harness load against the run sends the key it finds exported (never recorded).
        loaded = run(
            runs,
            *("load", "--run", run_dir.name, "-n", "4", "-c", "2", "--max-tokens", "4"),
            "--no-progress",
            timeout=300,
            env={"VLLM_API_KEY": API_KEY},
        )
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        statuses = [json.loads(line)["status"] for line in (run_dir / "requests.jsonl").open()]
        assert statuses == ["ok"] * 4, statuses

        # In no command line of any process of the server (readable by every user).
        for proc in procs:
            try:
                cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            for secret in (API_KEY, HF_TOKEN):
                assert secret.encode() not in cmdline, f"secret on the command line of {proc}"

        # An incident bundle of the live server (every process's environment holds the key).
        dumped = run(runs, "dump", run_dir.name, "--gap", "0.5", timeout=300)
        assert dumped.returncode == 0, dumped.stderr[-3000:]
    finally:
        # `down RUN_ID`, never --all: other servers on this host are not ours to stop.
        downs = [run(runs, "down", d.name, timeout=180) for d in runs.iterdir() if d.is_dir()]
        stop_all_under(runs)
    assert downs and all(d.returncode == 0 for d in downs), [d.stderr for d in downs]

    spec = json.loads((run_dir / "launch_spec.json").read_text())
    assert spec["env"]["VLLM_API_KEY"] == MASK and spec["env"]["HF_TOKEN"] == MASK
    assert "--api-key" not in spec["argv"] and "--hf-token" not in spec["argv"]
    files = [p for p in runs.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"launch_spec.json", "state.json", "server.log", "env.txt"} <= names, names
    assert (run_dir / "server.log").stat().st_size > 0
    # The background watcher's canary (/v1/completions) carried the key: the server took it.
    log = (run_dir / "server.log").read_text(errors="replace")
    assert '"POST /v1/completions HTTP/1.1" 200' in log
    assert '"POST /v1/completions HTTP/1.1" 401' not in log
    for path in files:
        data = path.read_bytes()
        for secret in (API_KEY, HF_TOKEN):
            assert secret.encode() not in data, f"a secret leaked into {path}"

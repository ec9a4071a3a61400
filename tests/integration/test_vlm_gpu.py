"""The VLM path on GPUs (skipped without an NVIDIA GPU; never skipped for any other reason in
CI): the tiny Qwen2-VL (``harness tiny-model DIR --kind qwen2-vl``; its vLLM and LMDeploy code
needs torchvision, which only GPU hosts have) served at TP=2 in the official images with the
``vlm-safe`` profile.

- LMDeploy: ``--vision-max-batch-size 1`` is accepted by the real server, which answers a
  ``vlm-mixed`` load and a 12 MP photo; LMDeploy has no server-side pixel cap, which the plan
  says, so the photo costs what the model's own processor makes of it (15,301 image tokens).
- vLLM: the 12 MP photo costs what the image the server scales it to costs, as on the CPU
  (tests/integration/test_vlm_vllm.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.containerplan import DEFAULT_IMAGES
from harness.load.images import data_url, make_image
from tests.conftest import REPO, free_port
from tests.integration.dockerutil import image_or_skip, labelled
from tests.integration.harnesscli import run

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture
def qwen2_vl(tmp_path: Path) -> Path:
    dest = tmp_path / "tiny-qwen2-vl"
    built = run(None, "tiny-model", str(dest), "--kind", "qwen2-vl", timeout=300)
    assert built.returncode == 0, built.stderr
    return dest


def harness(runs: Path, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    return run(runs, *args, timeout=timeout, cwd=REPO)


def serve_tp2(runs: Path, model: Path, engine: str, image: str, *extra: str) -> dict[str, Any]:
    served = harness(
        runs, "serve", "--engine", engine, "--model", str(model), "--tp", "2",
        "--profile", "vlm-safe", "--runtime", "docker", "--device", "cuda", "--gpus", "tp",
        "--image", image, "--port", str(free_port()), "--detach", "--startup-timeout", "1200",
        *extra,
    )  # fmt: skip
    assert served.returncode == 0, served.stderr[-3000:]
    (run_dir,) = list(runs.iterdir())
    spec: dict[str, Any] = json.loads((run_dir / "launch_spec.json").read_text())
    return spec


def prompt_tokens(spec: dict[str, Any], width: int, height: int) -> int:
    url = data_url(make_image(width, height, "jpeg", (0, width, height)), "jpeg")
    body = {
        "model": spec["served_model_name"],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is in the image"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
        "max_tokens": 4,
    }
    response = httpx.post(f"{spec['base_url']}/v1/chat/completions", json=body, timeout=600)
    assert response.status_code == 200, response.text
    return int(response.json()["usage"]["prompt_tokens"])


def load_ok(docker_runs: Path, spec: dict[str, Any]) -> None:
    done = harness(
        docker_runs, "load", "--run", spec["run_id"], "-w", "vlm-mixed", "-n", "4", "-c", "2",
        "--max-tokens", "4", "--no-progress", timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (docker_runs / spec["run_id"] / "requests.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["status"] for r in records] == ["ok"] * 4
    assert all(i["width"] * i["height"] <= 1003520 for r in records for i in r["images"])


def test_lmdeploy_tp2_vlm_safe(docker_client: Any, qwen2_vl: Path, docker_runs: Path) -> None:
    image = image_or_skip(docker_client, DEFAULT_IMAGES[("lmdeploy", "cuda")])
    spec = serve_tp2(docker_runs, qwen2_vl, "lmdeploy", image, "--engine-arg", "--backend pytorch")
    argv = spec["argv"]
    assert argv[argv.index("--vision-max-batch-size") + 1] == "1"
    assert any("LMDeploy has no server-side pixel limit" in w for w in spec["warnings"])
    load_ok(docker_runs, spec)
    # No server-side cap: the model's own processor limit (12845056 px) applies.
    assert prompt_tokens(spec, 4000, 3000) - prompt_tokens(spec, 224, 224) == 15301 - 64
    assert harness(docker_runs, "down", spec["run_id"], timeout=300).returncode == 0
    assert labelled(docker_client, spec["run_id"]) == []


def test_vllm_tp2_vlm_safe(docker_client: Any, qwen2_vl: Path, docker_runs: Path) -> None:
    image = image_or_skip(docker_client, DEFAULT_IMAGES[("vllm", "cuda")])
    spec = serve_tp2(docker_runs, qwen2_vl, "vllm", image)
    assert spec["warnings"] == []
    load_ok(docker_runs, spec)
    photo = prompt_tokens(spec, 4000, 3000)
    assert photo == prompt_tokens(spec, 41 * 28, 30 * 28) == prompt_tokens(spec, 8000, 6000)
    assert photo - prompt_tokens(spec, 224, 224) == 41 * 30 - 64
    assert harness(docker_runs, "down", spec["run_id"], timeout=300).returncode == 0
    assert labelled(docker_client, spec["run_id"]) == []

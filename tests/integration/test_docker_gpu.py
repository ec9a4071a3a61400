"""The GPU path end to end (skipped without an NVIDIA GPU; never skipped for any other reason
in CI): the official-image build of harness serves at TP=2 with GPUs as device requests.

The plan side of the GPU path (device requests: all, a count, ids) is unit-tested in
tests/unit/test_containerplan.py and tests/unit/runtime/test_docker_pure.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.containerplan import DEFAULT_IMAGES
from tests.conftest import REPO, free_port
from tests.integration.dockerutil import chat, image_or_skip, labelled
from tests.integration.harnesscli import run

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.gpu, pytest.mark.slow]


def test_vllm_tp2_on_gpus_in_the_official_image(
    docker_client: Any, tiny_model_dir: Path, docker_runs: Path
) -> None:
    image = image_or_skip(docker_client, DEFAULT_IMAGES[("vllm", "cuda")])
    port = free_port()
    served = run(
        docker_runs, "serve", "--engine", "vllm", "--model", str(tiny_model_dir), "--tp", "2",
        "--profile", "debug", "--runtime", "docker", "--device", "cuda", "--gpus", "tp",
        "--image", image, "--port", str(port), "--detach", "--startup-timeout", "1200",
        timeout=1500, cwd=REPO,
    )  # fmt: skip
    assert served.returncode == 0, served.stderr
    (run_dir,) = list(docker_runs.iterdir())
    (container,) = labelled(docker_client, run_dir.name)
    requests = docker_client.api.inspect_container(container.id)["HostConfig"]["DeviceRequests"]
    assert requests and requests[0]["Count"] == 2
    assert requests[0]["Capabilities"] == [["gpu"]]
    listed = container.exec_run(["nvidia-smi", "-L"])
    assert listed.output.decode().count("GPU ") == 2
    spec = json.loads((run_dir / "launch_spec.json").read_text())
    chat(spec["base_url"], spec["served_model_name"])
    down = run(docker_runs, "down", run_dir.name, timeout=180, cwd=REPO)
    assert down.returncode == 0, down.stderr
    assert labelled(docker_client, run_dir.name) == []

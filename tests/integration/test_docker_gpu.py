"""The GPU path end to end (skipped without an NVIDIA GPU; never skipped for any other reason
in CI): the official-image build of harness serves at TP=2 with GPUs as device requests.

The plan side of the GPU path (device requests: all, a count, ids) is unit-tested in
tests/unit/test_containerplan.py and tests/unit/runtime/test_docker_pure.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.containerplan import DEFAULT_IMAGES
from tests.conftest import REPO, free_port
from tests.integration.dockerutil import (
    chat,
    docker_or_skip,
    image_or_skip,
    labelled,
    remove_labelled,
)

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture
def client() -> Any:
    return docker_or_skip()


@pytest.fixture
def runs(tmp_path: Path, client: Any) -> Iterator[Path]:
    d = tmp_path / "runs"
    d.mkdir()
    yield d
    for run in d.iterdir():
        remove_labelled(client, run.name)


def test_vllm_tp2_on_gpus_in_the_official_image(
    client: Any, tiny_model_dir: Path, runs: Path
) -> None:
    image = image_or_skip(client, DEFAULT_IMAGES[("vllm", "cuda")])
    port = free_port()
    served = subprocess.run(
        [sys.executable, "-m", "harness", "serve", "--engine", "vllm",
         "--model", str(tiny_model_dir), "--tp", "2", "--profile", "debug", "--runtime", "docker",
         "--device", "cuda", "--gpus", "tp", "--image", image, "--port", str(port),
         "--runs-dir", str(runs), "--detach", "--startup-timeout", "1200"],
        capture_output=True, text=True, timeout=1500, cwd=REPO,
    )  # fmt: skip
    assert served.returncode == 0, served.stderr
    (run_dir,) = list(runs.iterdir())
    (container,) = labelled(client, run_dir.name)
    requests = client.api.inspect_container(container.id)["HostConfig"]["DeviceRequests"]
    assert requests and requests[0]["Count"] == 2
    assert requests[0]["Capabilities"] == [["gpu"]]
    listed = container.exec_run(["nvidia-smi", "-L"])
    assert listed.output.decode().count("GPU ") == 2
    spec = json.loads((run_dir / "launch_spec.json").read_text())
    chat(spec["base_url"], spec["served_model_name"])
    down = subprocess.run(
        [sys.executable, "-m", "harness", "down", run_dir.name, "--runs-dir", str(runs)],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert labelled(client, run_dir.name) == []

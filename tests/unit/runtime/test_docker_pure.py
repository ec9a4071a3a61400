"""The Docker runtime without a Docker engine: an unreachable engine, ``down`` without a run."""

from __future__ import annotations

import pytest

from harness.errors import BadInput, DockerProblem
from harness.runtime.docker import docker_client
from harness.runtime.docker_runs import docker_down


def test_unreachable_docker_is_an_environment_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(DockerProblem) as info:
        docker_client(timeout_s=2)
    assert "cannot reach the Docker engine at unix:///nonexistent/docker.sock" in info.value.message
    assert "dockerd" in (info.value.hint or "")


def test_down_needs_a_run_or_all() -> None:
    with pytest.raises(BadInput, match="--all"):
        docker_down()

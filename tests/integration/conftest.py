"""Fixtures of the integration tests: processes and servers stopped however a test ends, and
the Docker engine, image and containers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import harnesscli
from tests.integration.dockerutil import (
    docker_or_skip,
    image_or_skip,
    remove_labelled,
    remove_under,
    unique_run_ids,
)


@pytest.fixture(autouse=True)
def process_trees() -> Iterator[None]:
    """Every process the test spawned (``harnesscli.spawn``, ``start``, ``run``, the servers of
    ``tests/integration/servers.py``) and that still runs when it ends is stopped with all it
    started, passed or failed. Processes of module-scoped fixtures were spawned before the
    test's mark: their fixture stops them."""
    mark = harnesscli.spawned_count()
    try:
        yield
    finally:
        harnesscli.stop_spawned_since(mark)


@pytest.fixture
def campaign_runs(tmp_path: Path) -> Iterator[Path]:
    """A runs directory whose servers are all stopped after the test, however it ended."""
    runs = tmp_path / "runs"
    runs.mkdir()
    try:
        yield runs
    finally:
        harnesscli.stop_all_under(runs)


@pytest.fixture
def docker_client() -> Any:
    """A client of the running Docker engine (fails in CI, skips elsewhere when missing)."""
    return docker_or_skip()


@pytest.fixture
def docker_image(docker_client: Any) -> str:
    """The vLLM CPU image CI builds (scripts/ci/docker.sh): python3, vLLM CPU, harness."""
    return image_or_skip(docker_client)


@pytest.fixture
def docker_runs(campaign_runs: Path, docker_client: Any) -> Iterator[Path]:
    """``campaign_runs`` whose containers are removed too: every container of a run planned
    under it (by its run id or run directory label), whether the test passed or not."""
    try:
        yield campaign_runs
    finally:
        for run in campaign_runs.iterdir():
            remove_labelled(docker_client, run.name)
        remove_under(docker_client, campaign_runs)


@pytest.fixture
def new_run_id(docker_client: Any) -> Iterator[Callable[[str], str]]:
    """Makes run ids unique to the test; their containers are removed at teardown."""
    yield from unique_run_ids(docker_client)

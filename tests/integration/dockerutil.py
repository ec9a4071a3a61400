"""Helpers for the Docker integration tests: engine/image requirements and cleanup by label (the
fixtures built on them are in tests/integration/conftest.py)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from harness.containerplan import LABEL_RUN_DIR, LABEL_RUN_ID, VLLM_CPU_IMAGE
from tests.conftest import require

#: The image CI builds (scripts/ci/docker.sh); it has python3, vLLM CPU and harness.
TEST_IMAGE = VLLM_CPU_IMAGE


def docker_or_skip() -> Any:
    """A docker client for the real engine (fails in CI, skips elsewhere when missing)."""
    try:
        from harness.runtime.docker import docker_client

        client = docker_client(timeout_s=30)
    except Exception as exc:
        require(False, f"a running Docker engine (scripts/ci/docker.sh): {exc}")
        raise
    return client


def image_or_skip(client: Any, image: str = TEST_IMAGE) -> str:
    try:
        client.images.get(image)
    except Exception:
        require(False, f"Docker image {image} (scripts/ci/docker.sh builds it)")
    return image


def remove_labelled(client: Any, prefix: str) -> list[str]:
    """Force-remove every container whose harness.run_id starts with ``prefix``."""
    removed = []
    for container in client.containers.list(all=True, filters={"label": LABEL_RUN_ID}):
        if (container.labels or {}).get(LABEL_RUN_ID, "").startswith(prefix):
            try:
                container.remove(force=True, v=True)
                removed.append(container.name)
            except Exception:
                pass
    return removed


def remove_under(client: Any, runs: Path) -> list[str]:
    """Force-remove every container whose harness.run_dir lies under ``runs``."""
    removed = []
    for container in client.containers.list(all=True, filters={"label": LABEL_RUN_DIR}):
        if (container.labels or {}).get(LABEL_RUN_DIR, "").startswith(str(runs)):
            with contextlib.suppress(Exception):
                container.remove(force=True, v=True)
                removed.append(container.name)
    return removed


def labelled(client: Any, run_id: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{LABEL_RUN_ID}={run_id}"}))


def unique_run_ids(client: Any) -> Iterator[Callable[[str], str]]:
    """For a fixture: makes run ids unique to one test; every container labelled with one of
    them is removed at teardown, whether the test passed or not."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"

    def new(kind: str) -> str:
        return f"{prefix}-{kind}"

    try:
        yield new
    finally:
        remove_labelled(client, prefix)


def chat(base_url: str, model: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """One chat completion; returns the JSON reply."""
    reply = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "temperature": 0,
        },
        timeout=timeout_s,
    )
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()
    assert data["choices"][0]["message"]["content"] is not None
    return data

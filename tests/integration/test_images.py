"""``make images`` after CI's Docker setup: builds (behind the proxy) or finds nothing to do.

scripts/ci/docker.sh builds the vLLM CPU image the way ``make images`` does (the repository's
wheelhouse, the CA bundle the host's pip trusts); a newcomer's ``make images`` must then work
here without options: up to date, or a rebuild that needs no package index inside the build.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from harness.containerplan import VLLM_CPU_IMAGE
from tests.conftest import REPO, require
from tests.integration.harnesscli import finish, spawn

pytestmark = [pytest.mark.integration, pytest.mark.docker]


def _docker_has(image: str) -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _make_images() -> subprocess.CompletedProcess[str]:
    # In a session of its own: past the timeout, make, the build script and docker build go.
    return finish(spawn(["make", "-s", "images"], cwd=REPO), 3600)


def test_make_images_after_ci_setup_builds_or_is_up_to_date() -> None:
    require(
        _docker_has("harness-base:bookworm") and _docker_has(VLLM_CPU_IMAGE),
        "Docker with CI's images (scripts/ci/docker.sh)",
    )
    first = _make_images()
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    assert "CERTIFICATE_VERIFY_FAILED" not in first.stdout + first.stderr
    # Nothing changed since: the second run builds nothing.
    second = _make_images()
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert f"{VLLM_CPU_IMAGE} is up to date" in second.stdout, second.stdout[-2000:]

"""Shared test helpers.

``require(...)`` is how an integration test asks for an outside dependency (Docker engine,
vLLM, py-spy, LMDeploy's parser environment): with ``CI=true`` a missing one FAILS the test;
elsewhere it skips with the reason. Only ``@pytest.mark.gpu`` tests may skip in CI.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background of a shell without job control (``(cmd &)``,
    some CI runners) inherits SIGINT ignored, and so would every harness the tests start:
    the tests that stop a foreground server with Ctrl-C would wait for nothing (measured: 5
    docs examples timed out after 120 s). A handler here makes exec give children the default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def require(condition: bool, what: str) -> None:
    """Fail (in CI) or skip (elsewhere) when an integration dependency is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"integration dependency missing in CI: {what}", pytrace=False)
    pytest.skip(f"missing: {what}")


def have_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidia0").exists()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if has_nvidia_gpu():
        return
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded tiny model, built once per session with ``harness tiny-model``."""
    require(have_module("transformers") and have_module("torch"), "transformers + torch")
    cached = os.environ.get("HARNESS_TEST_TINY_MODEL")
    if cached and (Path(cached) / "config.json").exists():
        return Path(cached)
    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    subprocess.run(
        [sys.executable, "-m", "harness", "tiny-model", str(out)], check=True, timeout=300
    )
    return out


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded tiny VLM, built once per session with ``harness tiny-model --kind vlm``."""
    require(have_module("transformers") and have_module("torch"), "transformers + torch")
    cached = os.environ.get("HARNESS_TEST_TINY_VLM")
    if cached and (Path(cached) / "config.json").exists():
        return Path(cached)
    out = tmp_path_factory.mktemp("tiny") / "tiny-vlm"
    subprocess.run(
        [sys.executable, "-m", "harness", "tiny-model", str(out), "--kind", "vlm"],
        check=True,
        timeout=300,
    )
    return out


@pytest.fixture
def runs_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "runs"
    d.mkdir()
    yield d

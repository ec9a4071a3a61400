"""The test cluster of ``scripts/testcluster.sh`` for integration tests: N node containers on an
internal Docker network, reached over real ssh (and pdsh) through the cluster's ssh wrapper.

:func:`cluster` brings one up (a unique name per use) and always takes it down, also when the
test fails; :class:`Cluster` runs ``harness`` with the cluster's ssh first on PATH and runs
commands on the nodes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO, require

SCRIPT = REPO / "scripts" / "testcluster.sh"
IMAGE = "harness-vllm-cpu:0.32.0"
LABEL = "harness.testcluster"


def docker_ready() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def image_has_sshd() -> bool:
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", IMAGE, "-c",
         "command -v sshd"],
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    return done.returncode == 0


def require_cluster() -> None:
    """The dependencies of a test cluster: Docker, the vLLM CPU image with sshd, ssh, pdsh."""
    require(docker_ready(), "a Docker engine (scripts/ci/docker.sh)")
    require(image_has_sshd(), f"{IMAGE} with sshd (make images)")
    require(shutil.which("ssh") is not None, "openssh-client")
    require(shutil.which("pdsh") is not None, "pdsh (scripts/testcluster.sh check installs it)")


@dataclass
class Cluster:
    name: str
    dir: Path
    nodes: dict[str, str]  # node name -> address on the cluster network

    @property
    def bin(self) -> Path:
        return self.dir / "bin"

    def env(self, *, pdsh: bool = True) -> dict[str, str]:
        """The environment for harness: the cluster's ssh first on PATH. ``pdsh=False`` leaves
        only that directory and the interpreter's on PATH (no pdsh: one ssh per host)."""
        path = f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"
        if not pdsh:
            path = os.pathsep.join([str(self.bin), str(Path(sys.executable).parent)])
        return {**os.environ, "PATH": path}

    def harness(
        self, *args: str, runs: Path, timeout: float = 600, pdsh: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "harness", "--runs-dir", str(runs), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(pdsh=pdsh),
            stdin=subprocess.DEVNULL,
        )

    def ssh(self, node: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "ssh"), node, command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def engine_processes(self, node: str) -> list[str]:
        """The vLLM processes on a node (command lines)."""
        out = self.ssh(node, "ps -eo args=").stdout.splitlines()
        return [line for line in out if "vllm" in line.lower() or "VLLM::" in line]

    def container(self, node: str) -> str:
        return f"{self.name}-{node}"

    def docker(self, *args: str) -> None:
        subprocess.run(["docker", *args], check=True, capture_output=True, timeout=60)

    def down(self) -> None:
        subprocess.run(
            ["bash", str(SCRIPT), "down", "--name", self.name, "--dir", str(self.dir)],
            capture_output=True,
            timeout=120,
        )

    def leftovers(self) -> list[str]:
        """Containers and networks of this cluster still there."""
        label = f"label={LABEL}={self.name}"
        containers = subprocess.run(
            ["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True
        ).stdout.split()
        networks = subprocess.run(
            ["docker", "network", "ls", "-q", "--filter", label], capture_output=True, text=True
        ).stdout.split()
        return containers + networks


@contextmanager
def cluster(
    state_dir: Path,
    *,
    nodes: int = 2,
    shares: Sequence[Path] = (),
    extra_nic: Sequence[str] = (),
) -> Iterator[Cluster]:
    """A fresh test cluster, removed on exit whatever happened."""
    require_cluster()
    name = f"htc-{uuid.uuid4().hex[:8]}"
    args = ["bash", str(SCRIPT), "up", "--name", name, "--dir", str(state_dir)]
    args += ["--nodes", str(nodes)]
    for share in shares:
        args += ["--share", str(share)]
    for node in extra_nic:
        args += ["--extra-nic", node]
    made = Cluster(name, state_dir, {})
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr + done.stdout
        for line in (state_dir / "nodes").read_text().splitlines():
            node, address = line.split()
            made.nodes[node] = address
        yield made
    finally:
        if shutil.which("docker"):
            for node in made.nodes:
                # A node paused by a test cannot be removed until it is unpaused.
                subprocess.run(
                    ["docker", "unpause", made.container(node)], capture_output=True, timeout=60
                )
            made.down()

"""Bad input and a missing environment around multi-node serving and remote dumps: one line
each (``error: ...`` and its hint), exit 2 for what the user typed, 3 for what is missing;
nothing is started and no run directory is created."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.integration.testcluster import Cluster, cluster

pytestmark = [pytest.mark.integration, pytest.mark.docker]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("cluster"), shares=[tiny_model_dir]) as made:
        yield made


def one_line_error(res: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and words in errors[0], res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["serve", "--tp", "2", "--nodes", "2"], 2,
         "--nodes 2 needs the nodes: --node-hosts h1,h2"),
        (["plan", "--tp", "3", "--nodes", "2", "--node-hosts", "node1,node2"], 2,
         "--tp 3 does not split over --nodes 2"),
        (["plan", "--tp", "2", "--nodes", "2", "--node-hosts", "node1,nowhere"], 3,
         "cannot reach node(s) over ssh: nowhere (exit 255: ssh: Could not resolve hostname"),
        (["plan", "--tp", "2", "--nodes", "2", "--node-hosts", "node1,node2",
          "--net-iface", "node2=ib0"], 2, "node2 has no interface ib0 (it has: eth0, lo)"),
        (["plan", "--tp", "2", "--nodes", "2", "--node-hosts", "node1,node2", "--engine", "sim"],
         2, "--nodes is for vLLM"),
        (["plan", "--tp", "2", "--nodes", "2", "--node-hosts", "node1,node2", "--format",
          "sbatch"], 2, "--format sbatch takes the nodes from the job's allocation"),
        (["serve", "--tp", "2", "--nodes", "2", "--node-hosts", "node1,node2", "--runtime",
          "docker"], 2, "serve --nodes runs the engine on each node as a process over ssh"),
    ],
)  # fmt: skip
def test_multi_node_bad_input(
    nodes: Cluster, tiny_model_dir: Path, tmp_path: Path, args: list[str], code: int, words: str
) -> None:
    runs = tmp_path / "runs"
    model = "sim" if "sim" in args else str(tiny_model_dir)
    res = nodes.harness(*args, "--model", model, runs=runs, timeout=120)
    one_line_error(res, code, words)
    assert not runs.exists() or not any(runs.iterdir()), "a bad start left a run directory"
    for node in nodes.nodes:
        assert nodes.engine_processes(node) == []


def test_slurm_not_installed_and_a_job_that_does_not_exist(tmp_path: Path) -> None:
    def dump(*args: str, path: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "harness", "--runs-dir", str(tmp_path), "dump", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PATH": path},
        )

    # No srun on PATH: exit 3, nothing recorded.
    res = dump("--slurm-job", "12", path=str(Path(sys.executable).parent))
    one_line_error(res, 3, "srun is not installed here")
    require(shutil.which("squeue") is not None, "SLURM (scripts/slurm.sh up)")
    res = dump("--slurm-job", "999999", path=os.environ["PATH"])
    one_line_error(res, 2, "no running SLURM job 999999")
    assert not any(tmp_path.iterdir())

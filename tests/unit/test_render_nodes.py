"""A multi-node plan rendered for people and tools without harness: one Compose service and one
``docker run`` per node, a shell script taking the node's rank, and the SLURM batch script."""

from __future__ import annotations

import subprocess

import yaml

from harness.cli.plan import render_shell
from harness.render import compose_dict, render_compose, render_docker_run, render_sbatch
from tests.unit.test_nodeplan import plan


def test_compose_has_one_service_per_node_on_the_host_network() -> None:
    spec = plan(runtime="docker")
    doc = compose_dict(spec)
    assert list(doc["services"]) == ["node0-node1", "node1-node2"]
    head, worker = doc["services"].values()
    assert head["network_mode"] == worker["network_mode"] == "host"
    assert head["environment"]["VLLM_HOST_IP"] == "172.25.0.2"
    assert worker["environment"]["VLLM_HOST_IP"] == "172.25.0.3"
    assert "--headless" in worker["entrypoint"] and "--headless" not in head["entrypoint"]
    assert worker["container_name"] == "harness-r1-node1"
    text = render_compose(spec)
    assert "on node2 (rank 1, worker, 172.25.0.3): docker compose -f FILE up node1-node2" in text
    assert yaml.safe_load(text) == doc


def test_docker_run_per_node() -> None:
    text = render_docker_run(plan(runtime="docker"))
    assert text.count("docker run") == 2
    assert "# on node1 (rank 0, head, 172.25.0.2)" in text
    assert "--env VLLM_HOST_IP=172.25.0.3" in text


def test_the_shell_script_runs_the_node_whose_rank_it_is_given(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = render_shell(plan())
    assert 'case "${1:?give the node rank: 0 on node1, 1 on node2}" in' in script
    path = tmp_path / "plan.sh"
    path.write_text(script.replace("exec ", "echo "))
    ran = subprocess.run(["sh", str(path), "1"], capture_output=True, text=True, check=True)
    assert "--node-rank 1" in ran.stdout and "--headless" in ran.stdout
    bad = subprocess.run(["sh", str(path), "7"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no node rank 7 (valid: 0 on node1, 1 on node2)" in bad.stderr


def test_sbatch_runs_harness_serve_on_the_allocation() -> None:
    one = render_sbatch(
        plan(nodes=()), ["/py", "-m", "harness", "serve", "--tp", "2"], output_dir="/r"
    )
    assert "#SBATCH --nodes=1" in one and "#SBATCH --cpus-per-task=2" in one
    assert one.rstrip().endswith("exec /py -m harness serve --tp 2")
    two = render_sbatch(plan(), ["/py", "-m", "harness", "serve"], nodes=2, output_dir="/r")
    assert "#SBATCH --nodes=2" in two and "#SBATCH --cpus-per-task=1" in two
    assert 'HOSTS=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | paste -sd, -)' in two
    assert two.rstrip().endswith('--node-hosts "$HOSTS"')
    assert subprocess.run(["bash", "-n"], input=two, text=True).returncode == 0

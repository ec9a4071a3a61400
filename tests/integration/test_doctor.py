"""harness doctor against the real things: torch.distributed ranks here and in a container made
from the plan, a container with a 1 MB /dev/shm, one whose processes harness may not ptrace,
and serve --preflight refusing such a plan.

Every container a doctor run creates is removed at teardown (by its run-directory label), also
when a test fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.containerplan import LABEL_RUN_DIR
from harness.doctor.checks import judge_distributed
from harness.doctor.run import install_scripts, run_distributed
from harness.plan import HostFacts, PlanRequest, make_plan
from tests.conftest import free_port, have_module, require
from tests.integration.dockerutil import docker_or_skip
from tests.integration.harnesscli import run

pytestmark = pytest.mark.integration

SHM_1MB = """\
description: a private 1 MB /dev/shm, to check that doctor catches it
container:
  ipc_mode: private
  shm_size: 1m
"""
#: Runs harness without any capability: it lacks CAP_SYS_PTRACE, and a container's processes
#: hold capabilities it does not, so the kernel refuses it ptrace (as for a non-root user).
NO_CAPS = [
    "setpriv",
    "--bounding-set=-all",
    "--inh-caps=-all",
    "--securebits=+noroot,+noroot_locked",
]


def harness(
    runs: Path, *args: str, prefix: tuple[str, ...] = (), timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return run(runs, *args, prefix=prefix, timeout=timeout)


def lines(out: str) -> dict[str, str]:
    """``STATUS name: detail`` lines by check name."""
    found = {}
    for line in out.splitlines():
        status, _, rest = line.partition(" ")
        if status in {"PASS", "WARN", "FAIL", "SKIP"}:
            found[rest.split(":", 1)[0]] = line
    return found


def checks_of(out: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(out)["checks"]}


@pytest.fixture
def torch_here() -> None:
    require(have_module("torch"), "torch (the vLLM CPU build brings it: make install-vllm)")


# -------------------------------------------------------------------------------- local


def test_doctor_local_tp2(tiny_model_dir: Path, runs_dir: Path, torch_here: None) -> None:
    proc = harness(
        runs_dir,
        "doctor",
        "--model",
        str(tiny_model_dir),
        "--tp",
        "2",
        "--runtime",
        "local",
        "--json",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = checks_of(proc.stdout)
    assert checks["distributed: gloo"]["status"] == "PASS"
    assert "over 2 ranks" in checks["distributed: gloo"]["detail"]
    for name in (
        "distributed: nccl",
        "distributed: pynccl",
        "distributed: pynccl cuda-graph",
        "gpus",
        "gpu peer access",
    ):
        assert checks[name]["status"] == "SKIP" and checks[name]["detail"], name
    assert checks["engine"]["status"] == "PASS"
    assert set(checks["shm"]) == {"name", "status", "detail", "fix"}
    (run,) = runs_dir.iterdir()
    assert (
        json.loads((run / "doctor.json").read_text())["checks"] == json.loads(proc.stdout)["checks"]
    )
    assert (run / "doctor" / "distributed" / "rank1.jsonl").is_file()


def local_spec(model: Path, runs: Path) -> Any:
    request = PlanRequest(
        engine="vllm",
        model=str(model),
        run_id="dist",
        runs_root=str(runs),
        tp=2,
        model_is_local_dir=True,
    )
    return make_plan(request, HostFacts(device="cpu", cpu_count=2, python=sys.executable))


def test_a_rank_that_never_starts_fails_in_time_naming_it(
    tiny_model_dir: Path, tmp_path: Path, torch_here: None
) -> None:
    spec = local_spec(tiny_model_dir, tmp_path)
    scripts = install_scripts(tmp_path / "doctor")
    summary, error = run_distributed(
        spec, scripts, tmp_path / "doctor", timeout_s=5, absent_ranks=(1,)
    )
    assert error is None and summary is not None
    check = judge_distributed(summary)[0]
    assert check.status == "FAIL"
    address = f"{summary['addr']}:{summary['port']}"
    assert check.detail.startswith(
        f"nproc 2: rank 1 never started, so it never joined the rendezvous at {address}"
    )
    assert (
        "rank 0 failed at the rendezvous" in check.detail and "1/2 clients joined" in check.detail
    )


def test_a_wrong_gloo_interface_on_one_rank_fails_naming_it(
    tiny_model_dir: Path, tmp_path: Path, torch_here: None
) -> None:
    spec = local_spec(tiny_model_dir, tmp_path)
    scripts = install_scripts(tmp_path / "doctor")
    summary, error = run_distributed(
        spec,
        scripts,
        tmp_path / "doctor",
        timeout_s=5,
        rank_env={1: {"GLOO_SOCKET_IFNAME": "bogus0"}},
    )
    assert error is None and summary is not None
    check = judge_distributed(summary)[0]
    assert check.status == "FAIL"
    assert check.detail.startswith("nproc 2: rank 1 failed at gloo-init")
    assert "bogus0" in check.detail and "GLOO_SOCKET_IFNAME=bogus0 on rank 1" in check.detail
    assert check.fix and "GLOO_SOCKET_IFNAME" in check.fix


# ------------------------------------------------------------------------------- docker


@pytest.fixture
def docker_runs(docker_runs: Path, docker_image: str) -> Path:
    """The shared fixture (containers of runs under it removed at teardown), with the image
    doctor's containers are made from."""
    return docker_runs


def leftovers(runs: Path) -> list[str]:
    client = docker_or_skip()
    return [
        str(c.name)
        for c in client.containers.list(all=True, filters={"label": LABEL_RUN_DIR})
        if (c.labels or {}).get(LABEL_RUN_DIR, "").startswith(str(runs))
    ]


@pytest.mark.docker
def test_doctor_in_a_container_tp2(tiny_model_dir: Path, docker_runs: Path) -> None:
    proc = harness(
        docker_runs,
        "doctor",
        "--model",
        str(tiny_model_dir),
        "--tp",
        "2",
        "--runtime",
        "docker",
        "--json",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = checks_of(proc.stdout)
    assert checks["distributed: gloo"]["status"] == "PASS"
    assert "container IPC host" in checks["shm"]["detail"]
    assert (
        "image harness-vllm-cpu" in checks["engine"]["detail"]
        and "Docker " in checks["engine"]["detail"]
    )
    assert leftovers(docker_runs) == []


@pytest.mark.docker
def test_one_megabyte_shm_at_tp2_fails_with_the_fix(
    tiny_model_dir: Path, docker_runs: Path, tmp_path: Path
) -> None:
    profile = tmp_path / "shm1m.yaml"
    profile.write_text(SHM_1MB)
    proc = harness(
        docker_runs, "doctor", "--model", str(tiny_model_dir), "--tp", "2", "--runtime", "docker",
        "--profile", str(profile), "--no-distributed",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    shm = lines(proc.stdout)["shm"]
    assert shm.startswith("FAIL shm: /dev/shm 1 MiB")
    assert "--ipc=host" in shm and "shm_size" in shm
    assert "error: 1 check(s) failed: shm" in proc.stderr


@pytest.mark.docker
def test_serve_preflight_refuses_that_container_plan(
    tiny_model_dir: Path, docker_runs: Path, tmp_path: Path
) -> None:
    profile = tmp_path / "shm1m.yaml"
    profile.write_text(SHM_1MB)
    proc = harness(
        docker_runs, "serve", "--model", str(tiny_model_dir), "--tp", "2", "--runtime", "docker",
        "--profile", str(profile), "--port", str(free_port()), "--preflight",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert lines(proc.stdout)["shm"].startswith("FAIL shm: /dev/shm 1 MiB")
    assert "error: preflight: 1 check(s) failed (shm); nothing was started" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing started, nothing recorded: no run directory, no container.
    assert list(docker_runs.iterdir()) == []
    assert leftovers(docker_runs) == []


@pytest.mark.docker
def test_a_container_harness_may_not_ptrace_fails_with_the_fix(
    tiny_model_dir: Path, docker_runs: Path
) -> None:
    require(shutil.which("setpriv") is not None, "setpriv (util-linux)")
    args = [
        "doctor",
        "--model",
        str(tiny_model_dir),
        "--tp",
        "2",
        "--runtime",
        "docker",
        "--no-distributed",
    ]
    proc = harness(docker_runs, *args, prefix=tuple(NO_CAPS))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    ptrace = lines(proc.stdout)["ptrace"]
    assert ptrace.startswith("FAIL ptrace: no way to take stacks of the server")
    assert "no CAP_SYS_PTRACE" in ptrace
    assert "--profile debug" in ptrace and "--cap-add SYS_PTRACE" in ptrace
    # With the capability in the container, py-spy inside it works: no longer a FAIL.
    debug = harness(docker_runs, *args, "--profile", "debug", prefix=tuple(NO_CAPS))
    assert lines(debug.stdout)["ptrace"].startswith("WARN ptrace:"), debug.stdout


@pytest.mark.gpu
def test_doctor_on_gpus_runs_nccl_pynccl_and_the_cuda_graph(
    tiny_model_dir: Path, runs_dir: Path
) -> None:
    proc = harness(
        runs_dir,
        "doctor",
        "--model",
        str(tiny_model_dir),
        "--tp",
        "2",
        "--device",
        "cuda",
        "--json",
    )
    checks = checks_of(proc.stdout)
    for name in (
        "distributed: gloo",
        "distributed: nccl",
        "distributed: pynccl",
        "distributed: pynccl cuda-graph",
    ):
        assert checks[name]["status"] == "PASS", checks[name]
    assert checks["gpus"]["status"] == "PASS" and "driver" in checks["gpus"]["detail"]
    (run,) = runs_dir.iterdir()
    assert (run / "doctor" / "nvidia-smi-topo.txt").is_file()

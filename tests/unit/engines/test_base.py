from __future__ import annotations

import pytest

from harness.campaign.startup import match_phase
from harness.engines import get_adapter
from harness.engines.base import cpu_thread_binding, flags_to_argv
from harness.errors import PlanError


@pytest.mark.parametrize(
    ("cpus", "tp", "expected"),
    [(2, 2, "0|1"), (8, 2, "0-3|4-7"), (2, 1, "0-1"), (1, 2, "0|0"), (6, 4, "0|1|2|3")],
)
def test_cpu_thread_binding(cpus: int, tp: int, expected: str) -> None:
    assert cpu_thread_binding(cpus, tp) == expected


def test_flags_to_argv() -> None:
    assert flags_to_argv({"--a": True, "--b": 3, "--c": False, "--d": None, "--e": "x"}) == [
        "--a",
        "--b",
        "3",
        "--e",
        "x",
    ]


def test_unknown_engine() -> None:
    with pytest.raises(PlanError, match="valid: vllm, lmdeploy, sim"):
        get_adapter("tgi")


# Lines copied from a real vLLM 0.32 CPU server log.
VLLM_LINES = [
    (
        "(APIServer pid=1) INFO 11-24 00:58:25 [model.py:733] Resolved architecture: LlamaForCausalLM",
        "resolving model",
    ),
    (
        "(EngineCore pid=2) INFO 11-24 00:58:35 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: model='/tmp/tiny1'",
        "initialising engine",
    ),
    (
        "(Worker pid=3) INFO 11-24 00:58:45 [parallel_state.py:1906] world_size=1 rank=0 local_rank=0",
        "starting workers",
    ),
    (
        "(Worker pid=3) INFO 11-24 00:58:45 [cpu_model_runner.py:68] Starting to load model /tmp/tiny1...",
        "loading weights",
    ),
    (
        "(Worker pid=3) INFO 11-24 00:58:45 [default_loader.py:501] Loading weights took 0.01 seconds",
        "weights loaded",
    ),
    (
        "(EngineCore pid=2) INFO 11-24 00:58:46 [kv_cache_utils.py:2327] CPU KV cache size: 2,097,152 tokens",
        "KV cache",
    ),
    (
        "(EngineCore pid=2) INFO 11-24 00:58:48 [core.py:402] init engine (profile, create kv cache, warmup model) took 1.60 s",
        "warmed up",
    ),
    (
        "(APIServer pid=1) INFO 11-24 00:58:48 [entry.py:140] Starting vLLM server on http://127.0.0.1:8011",
        "starting API server",
    ),
    ("(APIServer pid=1) INFO:     Application startup complete.", "ready"),
    (
        "(APIServer pid=1) WARNING [vllm.py:1703] Enforce eager set, disabling torch.compile, CUDAGraphs",
        None,
    ),
]


@pytest.mark.parametrize(("line", "phase"), VLLM_LINES)
def test_vllm_phases_from_real_log_lines(line: str, phase: str | None) -> None:
    assert match_phase(line, get_adapter("vllm").startup_phases) == phase

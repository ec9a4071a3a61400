from __future__ import annotations

import pytest

from harness.engines.sim import sim_argv, validate_fault, validate_faults
from harness.errors import PlanError
from harness.sim.faults import FAULT_KINDS, parse_fault, parse_faults


def test_defaults_filled_in() -> None:
    f = parse_fault("stall:p=0.05,after=3")
    assert f.kind == "stall"
    assert f.params == {"p": 0.05, "after": 3, "for": None}
    assert parse_fault("worker-stall").params == {"rank": 1, "at": 30.0, "mode": "spin"}


@pytest.mark.parametrize(
    "spec",
    [
        "stall:p=0.01,after=5,for=30",
        "engine-stall:at=30",
        "worker-stall:rank=1,at=30",
        "crash:at=60",
        "startup-hang:p=0.2",
        "http-error:p=0.05",
        "slow-health:ms=3000",
    ],
)
def test_issue_examples_are_valid(spec: str) -> None:
    validate_fault(spec)


def test_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(PlanError) as exc:
        validate_fault("hang:p=1")
    msg = str(exc.value)
    assert "\n" not in msg
    for kind in FAULT_KINDS:
        assert kind in msg


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("stall:q=1", "p=..."),
        ("stall:p=2", "between 0 and 1"),
        ("stall:p=abc", "must be a float"),
        ("http-error:status=200", "400-599"),
        ("worker-stall:mode=fast", "spin or sleep"),
        ("crash:at=-1", "negative"),
    ],
)
def test_bad_values(spec: str, needle: str) -> None:
    with pytest.raises(PlanError, match=needle):
        parse_fault(spec)


def test_worker_rank_must_exist() -> None:
    with pytest.raises(PlanError, match="rank 1 does not exist"):
        parse_faults(["worker-stall:rank=1"], tp=1)
    assert parse_faults(["worker-stall:rank=1"], tp=2)[0].params["rank"] == 1


def test_sim_argv() -> None:
    argv = sim_argv(
        "/py",
        host="127.0.0.1",
        port=8123,
        tp=2,
        served_model_name="m",
        faults=["stall:p=0.1"],
        extra_args=["--itl-ms", "5"],
    )
    assert argv == [
        "/py",
        "-m",
        "harness",
        "sim",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--tp",
        "2",
        "--model-name",
        "m",
        "--fault",
        "stall:p=0.1",
        "--itl-ms",
        "5",
    ]
    with pytest.raises(PlanError):
        sim_argv(
            "/py", host="h", port=1, tp=1, served_model_name="m", faults=["nope"], extra_args=[]
        )


def test_a_plan_checks_the_worker_rank_against_its_tp() -> None:
    with pytest.raises(PlanError, match="rank 1 does not exist with --tp 1"):
        validate_faults(["worker-stall:rank=1"], tp=1)
    with pytest.raises(PlanError, match="rank 2 does not exist"):
        sim_argv(
            "/py",
            host="h",
            port=1,
            tp=2,
            served_model_name="m",
            faults=["worker-stall:rank=2"],
            extra_args=[],
        )

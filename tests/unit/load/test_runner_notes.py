"""What ``harness load`` says about the rate: notes in summary.json and the final line."""

from __future__ import annotations

from typing import Any

import pytest

from harness.cli.loadopts import arrival_settings as _arrival
from harness.cli.loadopts import join_goodput_values
from harness.cli.loadview import rate_line
from harness.errors import BadInput
from harness.load.config import LoadConfig
from harness.load.config import expected_note as _expected_note


def test_a_short_unlucky_poisson_run_says_why_its_rate_differs() -> None:
    cfg = LoadConfig(rate=5.0, duration_s=10.0)
    note = _expected_note(cfg, {"mean": 50.0, "low": 37, "high": 64}, 73)
    assert note is not None
    assert "send 50 requests on average (95 % of seeds: 37 to 64)" in note
    assert "this run sent 73" in note and "seed 0" in note and "7.3/s" in note
    short = _expected_note(cfg, {"mean": 50.0, "low": 37, "high": 64}, 52)
    assert short is not None and short.startswith("short run:") and "±27%" in short
    # A long run within its range: nothing to say.
    long = LoadConfig(rate=5.0, duration_s=3600.0)
    assert _expected_note(long, {"mean": 18000.0, "low": 17737, "high": 18263}, 18010) is None
    constant = LoadConfig(rate=5.0, duration_s=10.0, arrival="constant")
    assert _expected_note(constant, {"mean": 50.0, "low": 50, "high": 50}, 50) is None


def summary(**rate: Any) -> dict[str, Any]:
    run = {"mode": "open", "concurrency": None, "duration_s": 10.0}
    base = {"requested": 5.0, "achieved": 7.358, "expected_sent_range": [37, 64]}
    return {"rate": base | rate, "run": run, "requests": {"sent": 73}}


def test_the_final_line_names_the_loop_and_the_cap() -> None:
    assert rate_line(summary()) == (
        "rate requested 5/s, achieved 7.358/s (73 sent in 10 s, expected 37-64)"
    )
    closed = {"rate": {"requested": None}, "run": {"mode": "closed", "concurrency": 8}}
    assert rate_line(closed) == "closed loop, concurrency 8"
    capped = summary(
        requested=20.0,
        achieved=2.05,
        expected_sent_range=None,
        capped_by_concurrency={"concurrency": 2, "waited": 37},
    )
    assert rate_line(capped) == (
        "rate requested 20/s, achieved 2.05/s; capped by --concurrency 2 "
        "(37 sends waited for a slot)"
    )
    assert "None" not in rate_line(summary(achieved=None))


def test_goodput_values_after_one_option_are_joined() -> None:
    assert join_goodput_values(["--goodput", "ttft:500", "tpot:50", "-c", "4"]) == [
        "--goodput",
        "ttft:500 tpot:50",
        "-c",
        "4",
    ]
    assert join_goodput_values(["--goodput=ttft:1", "e2el:9", "--goodput", "tpot:2"]) == [
        "--goodput",
        "ttft:1 e2el:9",
        "--goodput",
        "tpot:2",
    ]
    assert join_goodput_values(["-w", "x", "--goodput"]) == ["-w", "x", "--goodput"]


def test_burstiness_alone_means_gamma_as_in_vllm() -> None:
    assert _arrival(None, None) == ("poisson", 1.0)
    assert _arrival(None, 1.0) == ("poisson", 1.0)
    assert _arrival(None, 0.5) == ("gamma", 0.5)
    assert _arrival("constant", None) == ("constant", 1.0)
    assert _arrival("gamma", 3.0) == ("gamma", 3.0)
    for arrival, burstiness in (("poisson", 0.5), ("constant", 2.0), (None, 0.0), (None, -1.0)):
        with pytest.raises(BadInput):
            _arrival(arrival, burstiness)

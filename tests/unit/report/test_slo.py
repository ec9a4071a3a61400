"""--max-rate-under-slo: parsing, the pass test, and the search steps."""

from __future__ import annotations

import pytest

from harness.campaign.slo import next_rate, probe_requests
from harness.errors import BadInput
from harness.report.slo import Criterion, check_probe, parse_slo


def test_parse_defaults_to_p99_and_reads_units() -> None:
    assert parse_slo("ttft=500ms,tpot=50ms") == (
        Criterion("ttft", "p99", 500.0),
        Criterion("tpot", "p99", 50.0),
    )
    assert parse_slo("e2e@p90=2s") == (Criterion("e2e", "p90", 2000.0),)


@pytest.mark.parametrize("text", ["", "ttft", "latency=5ms", "ttft@p42=5ms", "ttft=0ms", "ttft=5m"])
def test_parse_refuses_bad_criteria(text: str) -> None:
    with pytest.raises(BadInput):
        parse_slo(text)


def summary(p99_ttft: float, *, stalled: int = 0, failed: int = 0, achieved: float = 10.0) -> dict:
    return {
        "latency_ms": {"ttft": {"p99": p99_ttft}},
        "requests": {"completed": 100, "failed": failed, "stalled": stalled, "aborted": 0},
        "rate": {"achieved": achieved},
    }


def test_a_probe_passes_only_within_every_limit_and_when_the_rate_was_sustained() -> None:
    slo = parse_slo("ttft=500ms")
    assert check_probe(slo, summary(400), 10.0) == (True, [])
    ok, why = check_probe(slo, summary(600), 10.0)
    assert not ok and "ttft" in why[0]
    assert not check_probe(slo, summary(400, stalled=1), 10.0)[0]
    assert not check_probe(slo, summary(400, failed=5), 10.0)[0]
    assert not check_probe(slo, summary(400, achieved=5.0), 10.0)[0]


def test_search_steps_double_halve_and_bisect() -> None:
    assert next_rate(4.0, None, 4.0) == 8.0
    assert next_rate(None, 4.0, 4.0) == 2.0
    assert next_rate(2.0, 8.0, 8.0) == pytest.approx(4.0)
    assert next_rate(4.0, 4.4, 4.4) is None  # within 15 %
    assert next_rate(None, 0.06, 0.06) is None  # below the lowest rate worth probing
    assert probe_requests(0.1) >= 20 and probe_requests(1000) == 200

"""LoadConfig's rules: flag-free messages with stable codes, worded by the command line."""

from __future__ import annotations

import pytest

from harness.cli import _in_cli_words
from harness.cli.loadopts import FLAG_MESSAGES
from harness.load.config import LoadConfig, LoadSettingError

BROKEN = {
    "no-loop": {"requests": 1},
    "rate": {"rate": 0.0, "requests": 1},
    "concurrency": {"concurrency": 0, "requests": 1},
    "no-bound": {"rate": 1.0},
    "duration": {"rate": 1.0, "duration_s": 0.0},
    "requests": {"rate": 1.0, "requests": 0},
    "timeouts": {"rate": 1.0, "requests": 1, "deadline_s": 0.0},
    "ramp": {"concurrency": 1, "requests": 1, "ramp_s": 5.0},
    "error-budget": {"rate": 1.0, "requests": 1, "error_budget": 0.0},
    "max-image-pixels": {"rate": 1.0, "requests": 1, "max_image_pixels": 0},
    "max-images-per-request": {"rate": 1.0, "requests": 1, "max_images_per_request": 0},
    "first-index": {"rate": 1.0, "requests": 1, "first_index": -1},
    "metric-percentiles": {"rate": 1.0, "requests": 1, "metric_percentiles": (50.0, 101.0)},
}


@pytest.mark.parametrize("code", sorted(BROKEN))
def test_each_rule_has_its_code_and_names_no_flag(code: str) -> None:
    with pytest.raises(LoadSettingError) as info:
        LoadConfig(**BROKEN[code]).validate()  # type: ignore[arg-type]
    assert info.value.code == code
    assert info.value.exit_code == 2
    assert "--" not in info.value.message
    # The command line says it with its flags (first-index has none: said as it is).
    assert _in_cli_words(info.value) == FLAG_MESSAGES.get(code, info.value.message)


def test_a_valid_config_passes_and_knows_its_schedule() -> None:
    config = LoadConfig(rate=5.0, duration_s=10.0)
    config.validate()
    expected = config.expected_sends()
    assert expected is not None and expected["low"] <= 50 <= expected["high"]
    assert LoadConfig(concurrency=2, requests=3).expected_sends() is None


def test_the_error_budget_is_a_count_or_a_fraction() -> None:
    assert LoadConfig(error_budget=3).over_budget(3, 3)
    assert not LoadConfig(error_budget=3).over_budget(2, 100)
    # A fraction only counts once 20 requests finished.
    assert not LoadConfig(error_budget=0.1).over_budget(5, 10)
    assert LoadConfig(error_budget=0.1).over_budget(5, 20)
    assert not LoadConfig().over_budget(100, 100)

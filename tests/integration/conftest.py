"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harnesscli import stop_all_under


@pytest.fixture
def campaign_runs(tmp_path: Path) -> Iterator[Path]:
    """A runs directory whose servers are all stopped after the test, however it ended."""
    runs = tmp_path / "runs"
    runs.mkdir()
    try:
        yield runs
    finally:
        stop_all_under(runs)

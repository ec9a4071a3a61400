"""doctor, fetch and shard are registered, say what they do in --help, and serve has
--preflight and --fetch."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from harness.cli import cli


@pytest.mark.parametrize(
    ("command", "needles"),
    [
        ("doctor", ["PASS, WARN, FAIL or SKIP", "--json", "--no-distributed", "--fetch"]),
        ("fetch", ["--dest", "--revision", "--source [hf|modelscope]", "--force", "Resumable"]),
        ("shard", ["--tp", "--engine [vllm|lmdeploy]", "--runtime [local|docker]", "--dest"]),
        ("serve", ["--preflight", "--fetch"]),
    ],
)
def test_help(command: str, needles: list[str]) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, needle

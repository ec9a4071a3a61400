"""The compare matrix and the command line's TP list."""

from __future__ import annotations

import pytest

from harness.campaign.compare import matrix
from harness.cli.compare import parse_tp_list
from harness.errors import BadInput


def test_labels_name_only_what_varies() -> None:
    cells = matrix(["vllm"], [1, 2], [()])
    assert [c.label for c in cells] == ["tp1", "tp2"]
    assert [c.key for c in cells] == ["vllm-tp1-default", "vllm-tp2-default"]
    cells = matrix(["vllm"], [2], [("default",), ("nccl-safe", "debug")])
    assert [c.label for c in cells] == ["default", "nccl-safe,debug"]
    assert cells[1].key == "vllm-tp2-nccl-safe+debug"
    cells = matrix(["vllm", "sim"], [1], [()])
    assert [c.label for c in cells] == ["vllm", "sim"]
    assert len(matrix(["vllm", "sim"], [1, 2], [("a",), ("b",)])) == 8


def test_tp_list() -> None:
    assert parse_tp_list("1,2") == [1, 2]
    assert parse_tp_list(" 2, 1 ,2") == [2, 1]
    for bad in ("", ",", "0", "1,0", "x", "-1", "1.5"):
        with pytest.raises(BadInput):
            parse_tp_list(bad)

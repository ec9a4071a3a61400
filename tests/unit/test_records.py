"""Records survive a writer killed mid-line: the torn line is skipped, then cut."""

from __future__ import annotations

import json
from pathlib import Path

from harness.records import append_jsonl, iter_jsonl, read_json, repair_jsonl, write_json


def test_append_read_and_repair_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    for i in range(3):
        append_jsonl(path, {"index": i})
    with open(path, "ab") as fh:
        fh.write(b'{"index": 3, "sta')  # the writer died here
    assert [r["index"] for r in iter_jsonl(path)] == [0, 1, 2]
    assert repair_jsonl(path) == len(b'{"index": 3, "sta')
    append_jsonl(path, {"index": 4})
    assert [r["index"] for r in iter_jsonl(path)] == [0, 1, 2, 4]
    assert repair_jsonl(path) == 0


def test_json_is_replaced_atomically_and_read_forgivingly(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json(path, {"a": 1})
    assert read_json(path) == {"a": 1}
    assert not list(tmp_path.glob("*.tmp"))
    path.write_text("[1, 2")
    assert read_json(path) == {}
    assert read_json(tmp_path / "missing.json") == {}
    assert json.loads(path.read_text().replace("[1, 2", "[1, 2]")) == [1, 2]

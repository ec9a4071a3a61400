"""Run and campaign files (I/O): JSON written atomically, JSONL appended and flushed line by
line, and JSONL read back after a crash.

Nothing a campaign records may be lost or counted twice, including when harness itself is
killed (SIGKILL, power loss): every record is one ``write`` of a whole line followed by a flush,
state files are replaced atomically (write a temporary file, then ``os.replace``), and a reader
ignores (or :func:`repair_jsonl` cuts) a last line that was being written when the process died.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Mapping[str, Any] | list[Any]) -> Path:
    """Replace ``path`` with ``data`` as JSON, atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (``{}`` when missing or unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    """Append one record as one line and flush it to the file."""
    line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()


def write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """Replace ``path`` with one line per record, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
    os.replace(tmp, path)
    return path


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete JSON-object line of ``path`` (a torn last line is skipped)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, also when the caller stops early
    except OSError:
        return
    with fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return  # torn by a crash while it was written
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def repair_jsonl(path: Path) -> int:
    """Cut a torn last line (no newline: the writer died mid-line) so appending can go on.
    Returns the number of bytes removed."""
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        # Records are small; look back at most 16 MiB for the last newline.
        start = max(0, size - (16 << 20))
        fh.seek(start)
        tail = fh.read()
        if tail.endswith(b"\n"):
            return 0
        cut = tail.rfind(b"\n")
        keep = start + cut + 1 if cut >= 0 else start
        fh.truncate(keep)
        return size - keep

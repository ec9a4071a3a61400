"""Write a load's result files in other tools' formats next to ``summary.json`` (I/O).

:func:`write_result_files` is what :class:`harness.load.runner.LoadRunner` calls when it writes
``summary.json`` (also after Ctrl-C), and what a campaign calls for each of its cells:

- ``bench_result.json``: the keys and units of ``vllm bench serve --save-result
  --save-detailed`` (see :mod:`harness.report.exports` for every key);
- ``requests.csv``: one row per finished request, the scalar fields of ``requests.jsonl``.

``requests.jsonl`` is streamed, twice: memory stays at about 60 bytes per request plus the
latency samples (exact up to 2 million per metric), whatever the file's size; the per-request
lists of the vLLM format are written as they are read. Both files are written to a temporary
name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import json
import os
from array import array
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from harness.report.exports import LIST_KEYS, BenchResult, itls_seconds
from harness.report.requestscsv import CSV_COLUMNS, csv_row

BENCH_RESULT_FILE = "bench_result.json"
REQUESTS_CSV_FILE = "requests.csv"


def write_result_files(
    out_dir: Path,
    summary: Mapping[str, Any],
    records_path: Path,
    *,
    records_offset: int = 0,
) -> list[Path]:
    """Write ``out_dir/bench_result.json`` and ``out_dir/requests.csv`` for the run that
    ``summary`` (a ``summary.json`` document) describes, from the records in ``records_path``
    (``requests.jsonl``) starting at byte ``records_offset`` (where this run's records begin
    when the file also holds earlier runs'). Returns the paths written.

    Raises ``OSError`` when a file cannot be read or written.
    """
    out_dir = Path(out_dir)
    bench_path = out_dir / BENCH_RESULT_FILE
    csv_path = out_dir / REQUESTS_CSV_FILE
    builder = BenchResult(summary)
    offsets: array[int] = array("q")
    csv_tmp = _tmp(csv_path)
    bench_tmp = _tmp(bench_path)
    try:
        with open(csv_tmp, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(CSV_COLUMNS)
            for offset, rec in _records(records_path, records_offset):
                offsets.append(offset)
                builder.add(rec)
                writer.writerow(["" if v is None else v for v in csv_row(rec)])
        order = builder.order()
        with open(records_path, "rb") as src, open(bench_tmp, "w", encoding="utf-8") as out:
            _write_bench(out, builder, order, _reread(src, offsets, order))
        os.replace(csv_tmp, csv_path)
        os.replace(bench_tmp, bench_path)
    finally:
        for tmp in (csv_tmp, bench_tmp):
            if tmp.exists():
                tmp.unlink()
    return [bench_path, csv_path]


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> None:
    """Write ``out_dir/summary.json`` (through a temporary name: never half a file)."""
    path = Path(out_dir) / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, allow_nan=False, default=str) + "\n")
    os.replace(tmp, path)


def write_run_files(
    out_dir: Path, summary: dict[str, Any], records_path: Path, *, records_offset: int = 0
) -> None:
    """``summary.json``, then the result files (:func:`write_result_files`); when those cannot
    be written, ``summary.json`` says what is missing instead of the run being lost."""
    write_summary(out_dir, summary)
    try:
        write_result_files(out_dir, summary, records_path, records_offset=records_offset)
    except (OSError, ValueError) as exc:
        summary["notes"].append(
            f"bench_result.json / requests.csv not written: {type(exc).__name__}: {exc}"
        )
        write_summary(out_dir, summary)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _records(path: Path, offset: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(byte offset, record)`` of each complete JSON line from ``offset`` on."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        pos = offset
        for line in fh:
            start, pos = pos, pos + len(line)
            if not line.endswith(b"\n"):
                break  # a line still being written
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield start, rec


def _reread(
    src: IO[bytes], offsets: array[int], order: np.ndarray[Any, np.dtype[np.int64]]
) -> Iterator[dict[str, Any]]:
    for i in order.tolist():
        src.seek(offsets[i])
        rec = json.loads(src.readline())
        assert isinstance(rec, dict)
        yield rec


def _dump(value: Any) -> str:
    return json.dumps(value, allow_nan=False)


_CHUNK = 8192


def _write_bench(
    out: IO[str],
    builder: BenchResult,
    order: np.ndarray[Any, np.dtype[np.int64]],
    in_order: Iterator[dict[str, Any]],
) -> None:
    out.write("{" + ", ".join(f"{_dump(k)}: {_dump(v)}" for k, v in builder.head().items()))
    for key in LIST_KEYS:
        out.write(f", {_dump(key)}: [")
        if key == "itls":
            for n, rec in enumerate(in_order):
                builder.add_tokens(rec)
                out.write((", " if n else "") + _dump(itls_seconds(rec)))
        else:
            column = builder.column(key)
            for start in range(0, len(order), _CHUNK):
                part = [column[i] for i in order[start : start + _CHUNK].tolist()]
                out.write((", " if start else "") + _dump(part)[1:-1])
        out.write("]")
    for key, value in builder.tail().items():
        out.write(f", {_dump(key)}: {_dump(value)}")
    out.write("}\n")


__all__ = ["BENCH_RESULT_FILE", "REQUESTS_CSV_FILE", "write_result_files"]

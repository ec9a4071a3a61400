"""PyTorch flight-recorder dumps (pure): the collective sequence per rank, and the missing ranks.

The flight recorder keeps the last N collectives of every process group in each rank's memory
(``TORCH_FR_BUFFER_SIZE``, or ``TORCH_NCCL_TRACE_BUFFER_SIZE`` for NCCL) and writes them, on
request or on a watchdog timeout, as one pickle per rank (PyTorch's documented dump format,
version 2.x): ``{"version", "pg_config", "pg_status", "entries": [{"collective_seq_id",
"profiling_name", "state", "retired", "process_group": (name, desc), "is_p2p", ...}]}``. The
same files are what PyTorch's own analyzer reads (``python -m
torch.distributed.flight_recorder.fr_trace DIR``); harness reads them without importing torch,
with an unpickler that builds nothing but plain containers, and answers what ``torchfrtrace``
answers first: for each process group, the last collective each rank entered and finished, and
which ranks never entered or never finished the last one ("missing ranks").

The rank of a dump is the number its file name ends with (``nccl_trace_rank_1``).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The directory ``harness watch --flight-recorder`` puts first on ``PYTHONPATH``: its
#: ``sitecustomize.py`` dumps the CPU (Gloo) recorder when the capture asks.
HELPER_DIR = Path(__file__).resolve().parent / "frhelper"
BUFFER_SIZE = 2000


def helper_env(pythonpath: str | None) -> dict[str, str]:
    """The environment that turns on PyTorch's CPU flight recorder and harness's dump helper
    (added to the NCCL recorder's variables; ``pythonpath``: the job's own ``PYTHONPATH``)."""
    path = str(HELPER_DIR) + (os.pathsep + pythonpath if pythonpath else "")
    return {"PYTHONPATH": path, "TORCH_FR_BUFFER_SIZE": str(BUFFER_SIZE)}


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, strings and numbers only: a dump never needs a class."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dump")


def load_dump(data: bytes) -> dict[str, Any]:
    """One rank's dump (pickle, or the JSON form of ``_dump_fr_trace_json``); ValueError when
    it is neither."""
    stripped = data.lstrip()
    if stripped.startswith(b"{"):
        try:
            doc = json.loads(stripped)
        except ValueError as exc:
            raise ValueError(f"not a flight-recorder dump ({exc})") from None
    else:
        try:
            doc = _PlainUnpickler(io.BytesIO(data)).load()
        except Exception as exc:  # a truncated or foreign pickle raises many types
            raise ValueError(f"not a flight-recorder dump ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries", []), list):
        raise ValueError("not a flight-recorder dump (no entries)")
    return doc


def rank_of(name: str) -> int | None:
    """``nccl_trace_rank_3`` -> 3."""
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else None


def recorder_of(name: str) -> str:
    """``nccl_trace_rank_3`` -> ``nccl_trace_rank_`` (the files of one recorder, all ranks)."""
    return re.sub(r"\d+$", "", name)


@dataclass
class RankState:
    """One rank in one process group."""

    rank: int
    entered: int  # the last collective sequence number it entered (0: none)
    completed: int  # the last one it finished
    last_op: str = ""
    last_state: str = ""


@dataclass
class GroupReport:
    """One process group across the ranks whose dumps were read."""

    name: str
    ranks: list[int]
    last_seq: int
    last_op: str
    states: dict[int, RankState] = field(default_factory=dict)
    never_entered: list[int] = field(default_factory=list)
    never_finished: list[int] = field(default_factory=list)
    no_dump: list[int] = field(default_factory=list)

    @property
    def missing(self) -> list[int]:
        return sorted({*self.never_entered, *self.never_finished, *self.no_dump})

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.name,
            "ranks": self.ranks,
            "last_seq": self.last_seq,
            "last_op": self.last_op,
            "per_rank": {
                str(r): {
                    "entered": s.entered,
                    "completed": s.completed,
                    "last_op": s.last_op,
                    "state": s.last_state,
                }
                for r, s in sorted(self.states.items())
            },
            "never_entered": self.never_entered,
            "never_finished": self.never_finished,
            "no_dump": self.no_dump,
        }


@dataclass
class FlightReport:
    """The dumps of one recorder (files that differ only in the rank number)."""

    groups: list[GroupReport]
    dumps: dict[int, str]  # rank -> file
    errors: list[str] = field(default_factory=list)
    recorder: str = ""  # the file names without the rank: ``nccl_trace_rank_``

    def missing_line(self) -> str:
        """One line: which ranks hold each group's last collective back."""
        parts = []
        for g in self.groups:
            if not g.missing:
                continue
            what = []
            if g.never_entered:
                what.append(f"{_ranks(g.never_entered)} never entered")
            if g.never_finished:
                what.append(f"{_ranks(g.never_finished)} never finished")
            if g.no_dump:
                what.append(f"{_ranks(g.no_dump)} left no dump")
            parts.append(f"{g.name}: {' and '.join(what)} collective #{g.last_seq} ({g.last_op})")
        return "; ".join(parts) if parts else "every rank finished its last collective"

    def to_dict(self) -> dict[str, Any]:
        return {
            "recorder": self.recorder,
            "dumps": {str(k): v for k, v in sorted(self.dumps.items())},
            "groups": [g.to_dict() for g in self.groups],
            "missing": self.missing_line(),
            "errors": self.errors,
        }


def _ranks(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def _group_name(entry: Mapping[str, Any]) -> str:
    pg = entry.get("process_group")
    if isinstance(pg, list | tuple) and pg:
        desc = str(pg[1]) if len(pg) > 1 and pg[1] else ""
        return desc or f"pg {pg[0]}"
    return f"pg {entry.get('pg_id', '?')}"


def _parse_ranks(text: Any) -> list[int]:
    if isinstance(text, list):
        return [int(x) for x in text if isinstance(x, int)]
    return [int(x) for x in re.findall(r"\d+", str(text or ""))]


def _finished(entry: Mapping[str, Any]) -> bool:
    state = str(entry.get("state") or "")
    # NCCL marks the state; Gloo's entries stay "scheduled" and are retired once done.
    return state == "completed" or entry.get("retired") is True


def analyze(dumps: Mapping[int, tuple[str, Mapping[str, Any]]]) -> FlightReport:
    """``{rank: (file name, dump)}`` -> per group, each rank's last collective and the ranks
    that never entered or never finished the group's last one."""
    per_group: dict[str, dict[int, RankState]] = {}
    expected: dict[str, list[int]] = {}
    for rank, (_name, doc) in sorted(dumps.items()):
        entries = [e for e in doc.get("entries", []) if isinstance(e, dict) and not e.get("is_p2p")]
        status_raw, config_raw = doc.get("pg_status"), doc.get("pg_config")
        status: dict[str, Any] = status_raw if isinstance(status_raw, dict) else {}
        config: dict[str, Any] = config_raw if isinstance(config_raw, dict) else {}
        groups: dict[str, list[dict[str, Any]]] = {}
        for e in entries:
            groups.setdefault(_group_name(e), []).append(e)
        for gname, items in groups.items():
            items.sort(key=lambda e: int(e.get("collective_seq_id") or 0))
            last = items[-1]
            entered = int(last.get("collective_seq_id") or 0)
            done = [int(e.get("collective_seq_id") or 0) for e in items if _finished(e)]
            completed = max(done, default=0)
            pg_id = str(last.get("pg_id", ""))
            st = status.get(pg_id)
            if isinstance(st, dict) and isinstance(st.get("last_completed_collective"), int):
                completed = max(completed, int(st["last_completed_collective"]))
            per_group.setdefault(gname, {})[rank] = RankState(
                rank,
                entered,
                min(completed, entered),
                str(last.get("profiling_name") or "?"),
                str(last.get("state") or ""),
            )
            for cfg in config.values():
                if isinstance(cfg, dict) and (
                    cfg.get("desc") == gname or len(config) == 1 or cfg.get("name") == gname
                ):
                    expected.setdefault(gname, _parse_ranks(cfg.get("ranks")))
    reports: list[GroupReport] = []
    for gname, states in sorted(per_group.items()):
        last_seq = max(s.entered for s in states.values())
        last_op = next(s.last_op for s in states.values() if s.entered == last_seq)
        ranks = sorted({*expected.get(gname, []), *states})
        report = GroupReport(gname, ranks, last_seq, last_op, dict(states))
        for r in ranks:
            s = states.get(r)
            if s is None:
                if r not in dumps:
                    report.no_dump.append(r)
                else:
                    report.never_entered.append(r)
            elif s.entered < last_seq:
                report.never_entered.append(r)
            elif s.completed < last_seq:
                report.never_finished.append(r)
        reports.append(report)
    return FlightReport(reports, {r: name for r, (name, _doc) in dumps.items()})


def read_dumps(files: Mapping[str, bytes]) -> list[FlightReport]:
    """Parse ``{file name: bytes}`` (one dump per rank and recorder) and analyse each recorder's
    dumps (NCCL's ``nccl_trace_rank_<r>``, the CPU recorder's ``..._cpu_<r>``) on its own."""
    by_recorder: dict[str, dict[int, tuple[str, Mapping[str, Any]]]] = {}
    errors: dict[str, list[str]] = {}
    for name, data in sorted(files.items()):
        rank, recorder = rank_of(name), recorder_of(name)
        problems = errors.setdefault(recorder, [])
        if rank is None:
            problems.append(f"{name}: no rank number at the end of the file name")
            continue
        try:
            by_recorder.setdefault(recorder, {})[rank] = (name, load_dump(data))
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    reports = []
    for recorder in sorted(errors):
        report = analyze(by_recorder.get(recorder, {}))
        report.errors, report.recorder = errors[recorder], recorder
        reports.append(report)
    return reports


def render(reports: Sequence[FlightReport]) -> list[str]:
    """The ``## Flight recorder`` section of ``summary.md``."""
    lines = ["## Flight recorder", ""]
    for report in reports:
        lines += _render_one(report)
    return lines


def _render_one(report: FlightReport) -> list[str]:
    lines = [
        f"{report.recorder}*: "
        + (
            f"missing ranks: {report.missing_line()}"
            if report.groups
            else "no collective in the dumps"
        )
    ]
    lines.extend(f"- {e}" for e in report.errors)
    lines.append("")
    if not report.groups:
        return lines
    lines.append("| group | rank | last entered | last finished | op | state |")
    lines.append("|---|---|---|---|---|---|")
    for g in report.groups:
        for r in g.ranks:
            s = g.states.get(r)
            if s is None:
                lines.append(f"| {g.name} | {r} | - | - | (no entry) | |")
            else:
                lines.append(
                    f"| {g.name} | {r} | #{s.entered} | #{s.completed} | {s.last_op} "
                    f"| {s.last_state} |"
                )
    return [*lines, ""]

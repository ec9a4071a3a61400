"""What an incident says (pure): process roles, the odd process out, ``summary.md``.

The first lines of ``summary.md`` are the answer a human needs at 3 a.m.::

    engine-stall (canary) detected at 2026-11-24 01:12:03 UTC: canary request got no token ...
    Worker_TP1 stopped (state T); Worker_TP0 waits in all_reduce; EngineCore waits in
    collective_rpc; APIServer waits in the event loop
    likely: odd-rank-out — Worker_TP1 stopped (state T) while its peers wait ...; try: ...

(line 3 from the signature catalogue, :mod:`harness.watchdog.signatures`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.watchdog.rules import GpuSample, Verdict, lone_busy_gpu, lone_spinner
from harness.watchdog.rules import ProcSample as _ProcSample

_STATE_WORDS = {
    "R": "running",
    "S": "sleeping",
    "D": "uninterruptible sleep",
    "T": "stopped",
    "t": "stopped by a tracer",
    "Z": "zombie",
    "X": "dead",
    "I": "idle",
}


_TITLE = re.compile(r"^(?:VLLM|sim|LMDeploy)::(?P<role>\S+)")


def role_name(name: str, cmdline: Sequence[str], environ: Mapping[str, str] | None = None) -> str:
    """A short, human name for a process: ``Worker_TP1``, ``EngineCore``, ``rank0``, ...

    vLLM renames its processes (``VLLM::Worker_TP1``); torch.distributed ranks are told apart by
    their ``RANK`` variable; launchers and API servers by their command line.
    """
    first = cmdline[0] if cmdline else ""
    for candidate in (first, name):
        # vLLM's setproctitle names (``VLLM::Worker_TP1``) and the simulator's (``sim::...``).
        m = _TITLE.match(candidate)
        if m:
            return m["role"]
    joined = " ".join(cmdline)
    env = environ or {}
    if "RANK" in env and ("TORCHELASTIC_RUN_ID" in env or "LOCAL_RANK" in env):
        return f"rank{env['RANK']}"
    if "--headless" in cmdline and "vllm" in joined:
        return "Headless"  # a multi-node worker node's vLLM (no API server there)
    if "vllm.entrypoints" in joined or re.search(r"\bvllm serve\b", joined):
        return "APIServer"
    if "multiprocessing.resource_tracker" in joined:
        return "resource_tracker"
    if "torch.distributed.run" in joined or re.search(r"\btorchrun\b", joined):
        return "torchrun"
    if "lmdeploy" in joined:
        return "lmdeploy"
    if "harness.sim" in joined or re.search(r"\bharness sim\b", joined):
        return "sim"
    if not cmdline:
        return name or "?"
    prog = os.path.basename(first)
    # "python script.py" / "python -m module": name the script or module.
    if prog.startswith("python") and len(cmdline) > 1:
        rest = cmdline[1:]
        if rest[0] == "-m" and len(rest) > 1:
            return f"{prog} -m {rest[1]}"
        if rest[0] == "-c":
            # An inline program: its text may span lines, and a role is one line.
            return f"{prog} -c"
        for arg in rest:
            if not arg.startswith("-"):
                return " ".join(f"{prog} {os.path.basename(arg)}".split())[:40]
    return prog or name or "?"


@dataclass
class ProcessReport:
    """One process in an incident: what /proc said and where py-spy saw it wait."""

    pid: int
    role: str
    state: str
    cpu_percent: float | None = None
    threads: int | None = None
    cmdline: str = ""
    ppid: int | None = None
    host: str | None = None
    python: bool = True
    wait: str | None = None
    wait_frame: str | None = None
    wait_category: str | None = None
    moved: bool | None = None  # stacks differ between the two dumps
    stack_files: list[str] = field(default_factory=list)
    capture_error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.role}@{self.host}" if self.host else self.role

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["label"] = self.label
        return d


def _sample(p: ProcessReport) -> _ProcSample:
    return _ProcSample(p.pid, p.label, p.state, p.cpu_percent, p.threads, p.cmdline, p.ppid, p.host)


def family(role: str) -> str:
    """Peers share a family: ``Worker_TP1`` -> ``Worker_TP``, ``rank3`` -> ``rank``."""
    return re.sub(r"\d+$", "", role)


@dataclass(frozen=True)
class OddOne:
    pid: int
    label: str
    reason: str  # e.g. "stopped (state T)"

    def __str__(self) -> str:
        return f"{self.label} {self.reason}"


def odd_one_out(
    processes: Sequence[ProcessReport], gpus: Sequence[GpuSample] = ()
) -> OddOne | None:
    """The process that differs from its peers, and how.

    In order: a stopped process (T), one in uninterruptible sleep (D), a zombie, the one
    spinning while every peer sleeps, the one of a peer group (TP workers, ranks) that is not
    in the collective its peers wait in.
    """
    for states, reason in (
        (("T", "t"), "stopped (state T)"),
        (("D",), "in uninterruptible sleep (state D)"),
        (("Z",), "exited but not reaped (zombie)"),
    ):
        for p in processes:
            if p.state in states:
                return OddOne(p.pid, p.label, reason)
    # Naming only (the spin rule itself is stricter): py-spy pauses processes while it reads
    # them, so a spinner measures below 100 % during the capture.
    spinner = lone_spinner([_sample(p) for p in processes if p.python], busy=50.0, idle=10.0)
    if spinner is not None:
        return OddOne(
            spinner.pid,
            spinner.name,
            f"spins at {spinner.cpu_percent:.0f}% CPU while its peers sleep",
        )
    groups: dict[str, list[ProcessReport]] = {}
    for p in processes:
        groups.setdefault(f"{p.host}/{family(p.role)}", []).append(p)
    for members in groups.values():
        if len(members) < 2:
            continue
        in_coll = [m for m in members if m.wait_category == "collective"]
        out = [m for m in members if m.wait_category != "collective" and m.wait]
        if in_coll and len(out) == 1:
            odd = out[0]
            peers = sorted({m.wait or "" for m in in_coll})
            return OddOne(
                odd.pid,
                odd.label,
                f"is not in the collective (in {odd.wait}; peers wait in {', '.join(peers)})",
            )
    busy = lone_busy_gpu(gpus)
    if busy is not None:
        return OddOne(
            -1, f"GPU {busy.index}", f"at {busy.util_percent:.0f}% while the other GPUs idle"
        )
    return None


# Helper processes that never explain a hang: left out of the headline (kept in the table).
_HELPERS = frozenset({"resource_tracker"})


def where_line(processes: Sequence[ProcessReport], odd: OddOne | None) -> str:
    """``Worker_TP1 stopped (state T); Worker_TP0 waits in all_reduce; ...``"""
    parts: list[str] = []
    if odd is not None:
        parts.append(str(odd))
    for p in processes:
        if odd is not None and p.pid == odd.pid and p.host == _odd_host(processes, odd):
            continue
        if not p.python or p.role in _HELPERS:
            continue
        if p.wait:
            verb = "runs in" if p.moved else "waits in"
            parts.append(f"{p.label} {verb} {p.wait}")
        elif p.capture_error:
            parts.append(f"{p.label}: no stack ({p.capture_error.splitlines()[0][:80]})")
    return "; ".join(parts) if parts else "no Python process could be inspected"


def _odd_host(processes: Sequence[ProcessReport], odd: OddOne) -> str | None:
    for p in processes:
        if p.pid == odd.pid and p.label == odd.label:
            return p.host
    return None


def _no_backticks(text: object) -> str:
    return str(text).replace("`", "'")


#: Line 3 of ``summary.md`` when no signature of the catalogue matched.
NO_SIGNATURE_LINE = "no known signature matched"


def headline(verdict: Verdict, detected_at: str) -> str:
    return f"{verdict.kind} ({verdict.rule}) detected at {detected_at}: {verdict.detail}"


def processes_table(processes: Sequence[ProcessReport]) -> str:
    """``processes.txt``: one line per process, node first when there are several nodes."""
    multi = any(p.host for p in processes)
    head = ("NODE  " if multi else "") + "PID  PPID  STATE  CPU%  THREADS  ROLE  WAITS-IN  COMMAND"
    lines = [head]
    for p in processes:
        cpu = "-" if p.cpu_percent is None else f"{p.cpu_percent:.0f}"
        cells = [
            str(p.pid),
            str(p.ppid if p.ppid is not None else "-"),
            f"{p.state}({_STATE_WORDS.get(p.state, '?')})",
            cpu,
            str(p.threads if p.threads is not None else "-"),
            p.role,
            (p.wait or ("not Python" if not p.python else "-")).replace(" ", "_"),
            p.cmdline,
        ]
        if multi:
            cells.insert(0, p.host or "-")
        lines.append("  ".join(cells))
    return "\n".join(lines) + "\n"


def render_summary(
    *,
    verdict: Verdict,
    detected_at: str,
    processes: Sequence[ProcessReport],
    odd: OddOne | None,
    also: Sequence[Verdict] = (),
    gpus: Sequence[GpuSample] = (),
    notes: Sequence[str] = (),
    files: Sequence[str] = (),
    capture_s: float | None = None,
    likely: str = NO_SIGNATURE_LINE,
    signatures: Sequence[Mapping[str, Any]] = (),
    sections: Sequence[str] = (),
) -> str:
    """The text of ``summary.md``: headline, where every process waits, the likely signature
    (``likely: <name> — <cause>; try: <next step>``), then details. ``signatures``: every
    match (``name``, ``cause``, ``next_step``, ``links``, ``evidence``); ``sections``: more
    markdown lines (the flight recorder's)."""
    lines = [headline(verdict, detected_at), where_line(processes, odd), likely, ""]
    lines.append(f"# Incident: {verdict.kind}")
    lines.append("")
    if also:
        lines.append("Other rules that fired: " + "; ".join(f"{v.rule}: {v.detail}" for v in also))
        lines.append("")
    lines.append("| process | pid | state | CPU % | waits in | stuck? |")
    lines.append("|---|---|---|---|---|---|")
    for p in processes:
        stuck = "-" if p.moved is None else ("moving" if p.moved else "same stack twice")
        where = p.wait_frame or p.wait or ("not a Python process" if not p.python else "-")
        if p.capture_error and not p.wait:
            where = f"no stack: {p.capture_error.splitlines()[0][:100]}"
        cpu = "-" if p.cpu_percent is None else f"{p.cpu_percent:.0f}"
        lines.append(
            f"| {p.label} | {p.pid} | {p.state} ({_STATE_WORDS.get(p.state, '?')}) "
            f"| {cpu} | {where.replace('|', '/')} | {stuck} |"
        )
    lines.append("")
    if gpus:
        lines.append("GPUs: " + ", ".join(f"GPU {g.index} {g.util_percent:.0f}%" for g in gpus))
        lines.append("")
    if signatures:
        lines.append("## Known signatures that match")
        lines.append("")
        for m in signatures:
            lines.append(f"- **{m['name']}**: {m['cause']}; try: {m['next_step']}")
            lines.extend(f"  - `{_no_backticks(e)}`" for e in m.get("evidence", []))
            lines.extend(f"  - see {link}" for link in m.get("links", []))
        lines.append("")
    lines.extend(sections)
    if notes:
        lines.append("## Notes")
        lines.extend(f"- {n}" for n in notes)
        lines.append("")
    if files:
        lines.append("## Files")
        lines.extend(f"- `{f}`" for f in files)
        lines.append("")
    if capture_s is not None:
        lines.append(f"Capture took {capture_s:.1f} s.")
    return "\n".join(lines) + "\n"

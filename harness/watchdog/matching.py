"""Matching the signature catalogue against an incident (pure).

:class:`Facts` is everything an incident knows that a signature may look at (log lines, every
process's report and stack, the odd process out, GPUs, ``nvidia-smi``'s answer, environments,
profiles, the images of the requests in flight); :func:`match_catalogue` returns every
signature that matches, in catalogue order, each with the evidence lines of the conditions that
held. The conditions are described in :mod:`harness.watchdog.signatures`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.watchdog.rules import GpuSample, lone_busy_gpu
from harness.watchdog.signatures import Catalogue, Condition, Signature
from harness.watchdog.stacks import Thread
from harness.watchdog.summary import NO_SIGNATURE_LINE, OddOne, ProcessReport, family

#: Evidence lines kept per condition (the first ones found).
EVIDENCE_PER_CONDITION = 3


@dataclass(frozen=True)
class LogLine:
    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text.strip()[:300]}"


@dataclass(frozen=True)
class ImageSize:
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass
class Facts:
    """Everything an incident knows that a signature may look at."""

    kind: str = "manual"
    rule: str = "manual"
    logs: Sequence[LogLine] = ()
    processes: Sequence[ProcessReport] = ()
    #: The threads of each process's last good dump, by (host, pid) (host None: this machine).
    stacks: Mapping[tuple[str | None, int], Sequence[Thread]] = field(default_factory=dict)
    odd: OddOne | None = None
    gpus: Sequence[GpuSample] = ()
    nvidia_smi: str = "absent"  # ok | timeout | error | absent
    envs: Sequence[Mapping[str, str]] = ()
    profiles: Sequence[str] = ()
    #: Per request in flight: its index (or source) and the sizes of its images.
    images: Sequence[tuple[str, Sequence[ImageSize]]] = ()


def log_lines(name: str, text: str) -> list[LogLine]:
    """The lines of a log file's text, numbered from 1."""
    return [LogLine(name, i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


@dataclass(frozen=True)
class Match:
    """A signature that matched, with the evidence of each condition that held."""

    name: str
    cause: str
    next_step: str
    links: tuple[str, ...]
    evidence: tuple[str, ...]
    source: str

    def likely_line(self) -> str:
        return f"likely: {self.name} — {self.cause}; try: {self.next_step}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cause": self.cause,
            "next_step": self.next_step,
            "links": list(self.links),
            "evidence": list(self.evidence),
            "source": self.source,
        }


def _label(p: ProcessReport) -> str:
    return f"{p.label} (pid {p.pid})"


def _family(p: ProcessReport) -> str:
    return family(p.role.split("[", 1)[0])


def _threads(facts: Facts, p: ProcessReport) -> Sequence[Thread]:
    return facts.stacks.get((p.host, p.pid), ())


def _frames(threads: Sequence[Thread]) -> Iterable[str]:
    for t in threads:
        for f in t.frames:
            yield str(f)


def _peer_groups(facts: Facts, *, with_stacks: bool = True) -> list[list[ProcessReport]]:
    """Groups of two or more Python processes of one family on one host (TP workers, ranks)."""
    groups: dict[str, list[ProcessReport]] = {}
    for p in facts.processes:
        if not p.python or (with_stacks and not _threads(facts, p)):
            continue
        base = p.role.split("[", 1)[0]
        if not base[-1:].isdigit():
            continue  # a role without a rank number (APIServer, EngineCore) has no peers
        groups.setdefault(f"{p.host}/{_family(p)}", []).append(p)
    return [g for g in groups.values() if len(g) >= 2]


def _log(cond: str, facts: Facts) -> list[str]:
    rx = re.compile(cond)
    return [str(line) for line in facts.logs if rx.search(line.text)]


def _stack(cond: str, facts: Facts) -> list[str]:
    rx = re.compile(cond)
    out = []
    for p in facts.processes:
        for frame in _frames(_threads(facts, p)):
            if rx.search(frame):
                out.append(f"{_label(p)}: {frame}")
                break
    return out


def _all_peers_in(cond: str, facts: Facts) -> list[str]:
    rx = re.compile(cond)
    for group in _peer_groups(facts):
        hits = []
        for p in group:
            frame = next((f for f in _frames(_threads(facts, p)) if rx.search(f)), None)
            if frame is None:
                break
            hits.append(f"{_label(p)}: {frame}")
        else:
            return hits
    return []


def _shape(shape: str, facts: Facts) -> list[str]:
    procs = [p for p in facts.processes if p.python]
    if shape == "odd-one-out":
        odd = facts.odd
        if odd is None or odd.pid < 0:
            return []
        me = next((p for p in procs if p.pid == odd.pid and p.label == odd.label), None)
        if me is None:
            return []
        peers = [
            p
            for p in procs
            if p is not me
            and p.host == me.host
            and _family(p) == _family(me)
            and p.wait_category == "collective"
        ]
        if not peers:
            return []
        return [str(odd), *(f"{_label(p)} waits in {p.wait}" for p in peers)]
    if shape == "same-collective":
        for group in _peer_groups(facts, with_stacks=False):
            waits = {p.wait for p in group}
            if (
                all(p.wait_category == "collective" for p in group)
                and len(waits) == 1
                and not any(p.state in ("T", "t", "D", "Z") for p in group)
            ):
                names = ", ".join(_label(p) for p in group)
                return [f"{names}: all wait in {waits.pop()}"]
        return []
    if shape == "idle-workers":
        waiting = [p for p in procs if p.wait_category == "rpc"]
        if not waiting:
            return []
        for group in _peer_groups(facts, with_stacks=False):
            if all(
                p.wait_category == "queue" and p.state not in ("T", "t", "D", "Z") for p in group
            ):
                return [
                    *(f"{_label(p)} waits in {p.wait}" for p in waiting),
                    *(f"{_label(p)} sits idle in {p.wait}" for p in group),
                ]
        return []
    return []


_STATE_WORDS = {"T": "stopped", "D": "in uninterruptible sleep", "Z": "a zombie"}


def _state(state: str, facts: Facts) -> list[str]:
    states = ("T", "t") if state == "T" else (state,)
    return [
        f"{_label(p)} {_STATE_WORDS[state]} (state {p.state})"
        for p in facts.processes
        if p.state in states
    ]


def _gpus(shape: str, facts: Facts, busy: float = 90.0, idle: float = 10.0) -> list[str]:
    gpus = list(facts.gpus)
    if not gpus:
        return []
    every = ", ".join(f"GPU {g.index} {g.util_percent:.0f}%" for g in gpus)
    if shape == "one-busy":
        return [every] if lone_busy_gpu(gpus, busy=busy, idle=idle) is not None else []
    if shape == "one-idle":
        cold = [g for g in gpus if g.util_percent <= idle]
        hot = [g for g in gpus if g.util_percent >= busy]
        return [every] if len(gpus) >= 2 and len(cold) == 1 and len(hot) == len(gpus) - 1 else []
    if shape == "all-busy":
        return [every] if all(g.util_percent >= busy for g in gpus) else []
    return []


def _process(cond: str, facts: Facts) -> list[str]:
    rx = re.compile(cond)
    return [
        f"{_label(p)}: {p.cmdline[:200]}"
        for p in facts.processes
        if rx.search(f"{p.role} {p.cmdline}")
    ]


def _env(cond: str, facts: Facts) -> list[str]:
    rx = re.compile(cond)
    seen: list[str] = []
    for env in facts.envs:
        for name, value in env.items():
            line = f"{name}={value}"
            if rx.search(line) and line not in seen:
                seen.append(line)
    return seen


def _images(limit: int, facts: Facts) -> list[str]:
    out = []
    for request, sizes in facts.images:
        for size in sizes:
            if size.pixels > limit:
                out.append(
                    f"request {request}: image {size.width}x{size.height} "
                    f"({size.pixels / 1e6:.1f} MP, over {limit / 1e6:.1f} MP)"
                )
    return out


_CHECKS: dict[str, Callable[[Any, Facts], list[str]]] = {
    "log": _log,
    "stack": _stack,
    "all_peers_in": _all_peers_in,
    "shape": _shape,
    "state": _state,
    "gpus": _gpus,
    "nvidia_smi": lambda v, f: [f"nvidia-smi -q: {f.nvidia_smi}"] if f.nvidia_smi == v else [],
    "kind": lambda v, f: [f"{f.kind} ({f.rule})"] if re.search(v, f"{f.kind} ({f.rule})") else [],
    "process": _process,
    "env": _env,
    "profile": lambda v, f: [f"profile {v} in the plan"] if v in f.profiles else [],
    "image_pixels_over": _images,
}


def evaluate(cond: Condition, facts: Facts) -> list[str]:
    """The evidence for one condition (empty: it does not hold)."""
    return _CHECKS[cond.key](cond.value, facts)


def match_signature(sig: Signature, facts: Facts, source: str = "") -> Match | None:
    """``sig`` against ``facts``: a :class:`Match` with its evidence, or None."""
    evidence: list[str] = []
    for cond in sig.match.all:
        found = evaluate(cond, facts)
        if not found:
            return None
        evidence += found[:EVIDENCE_PER_CONDITION]
    if sig.match.any:
        hits = [found for found in (evaluate(c, facts) for c in sig.match.any) if found]
        if not hits:
            return None
        for found in hits:
            evidence += found[:EVIDENCE_PER_CONDITION]
    if any(evaluate(cond, facts) for cond in sig.match.none):
        return None
    for cond in sig.match.also:
        evidence += evaluate(cond, facts)[:EVIDENCE_PER_CONDITION]
    values = {"odd": str(facts.odd) if facts.odd else "no process stands out in the stacks"}
    return Match(
        sig.name,
        sig.cause.format_map(values),
        sig.next_step.format_map(values),
        tuple(sig.links),
        tuple(dict.fromkeys(evidence)),
        source,
    )


def match_catalogue(catalogue: Catalogue, facts: Facts) -> list[Match]:
    """Every signature of ``catalogue`` that matches, in catalogue order (most likely first)."""
    out = []
    for sig, source in catalogue.signatures:
        m = match_signature(sig, facts, source)
        if m is not None:
            out.append(m)
    return out


def likely_line(matches: Sequence[Match]) -> str:
    """Line 3 of ``summary.md``."""
    return matches[0].likely_line() if matches else NO_SIGNATURE_LINE

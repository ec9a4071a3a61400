"""Writing an incident bundle (I/O): every file through the redactor, the stack files, and the
per-process reports built from the dumps.

``stacks/<pid>.txt`` is for people: the dumps in py-spy's text layout, each headed by when and
how it was taken. ``stacks/<pid>.json`` is for programs: the same dumps as py-spy's JSON
objects (``thread_name``, ``active``, ``owns_gil``, ``frames`` of ``name``, ``filename``,
``line``), raw from ``py-spy dump --json`` when py-spy has it. Where a process waits and whether
its stack moved between the dumps come from the structured form.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.console import Console
from harness.watchdog import cores as cr
from harness.watchdog import stacks as st
from harness.watchdog.probes import ProcInfo, tail_bytes
from harness.watchdog.pyspy import Dump, dump_core
from harness.watchdog.redact import Redactor
from harness.watchdog.summary import OddOne, ProcessReport, role_name


class BundleWriter:
    """Writes bundle files, every text through the redactor, and remembers what it wrote."""

    def __init__(self, root: Path, redactor: Redactor) -> None:
        self.root = root
        self.redactor = redactor
        self.files: list[str] = []

    def text(self, rel: str, content: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.redactor.text(content), encoding="utf-8")
        if rel not in self.files:
            self.files.append(rel)
        return path

    def json(self, rel: str, doc: Any) -> Path:
        return self.text(rel, json.dumps(doc, indent=2, default=str) + "\n")

    def copy_text(self, rel: str, src: Path, limit: int) -> str:
        """Copy the tail of a text file; returns the (redacted) text written."""
        text = self.redactor.text(tail_bytes(src, limit))
        self.text(rel, text)
        return text

    def copy_binary(self, rel: str, src: Path, limit: int = 64 * 2**20) -> bool:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if src.stat().st_size <= limit:
                shutil.copyfile(src, path)
                if rel not in self.files:
                    self.files.append(rel)
                return True
        return False


@dataclass
class ProcessStacks:
    """A process's report and the threads of its last good dump (for signatures)."""

    reports: list[ProcessReport] = field(default_factory=list)
    threads: dict[tuple[str | None, int], list[st.Thread]] = field(default_factory=dict)


def process_reports(
    procs: Sequence[ProcInfo],
    rounds: Mapping[int, list[Dump]],
    w: BundleWriter,
    t0: float,
) -> ProcessStacks:
    """One :class:`ProcessReport` per process, its stack files written (``.txt`` and
    ``.json``), where it waits and whether it moved between the dumps."""
    names = [role_name(p.name, p.cmdline, p.environ) for p in procs]
    counts = {n: names.count(n) for n in names}
    out = ProcessStacks()
    for p, name in zip(procs, names, strict=True):
        role = name if counts[name] == 1 else f"{name}[{p.pid}]"
        cmd = " ".join(w.redactor.argv(p.cmdline)) or p.name
        state = p.settled_state
        rep = ProcessReport(
            pid=p.pid,
            role=role,
            state="gone" if p.gone else state,
            cpu_percent=p.cpu_percent,
            threads=p.threads,
            cmdline=cmd,
            ppid=p.ppid,
            python=p.python,
        )
        rel = f"stacks/{p.pid}.txt"
        if p.gone:
            rep.capture_error = "process exited before the capture"
            w.text(rel, f"{p.pid}: process exited before the capture\n")
        elif not p.python:
            w.text(
                rel,
                f"{p.pid} {role}: not a Python process ({p.exe or p.name}); "
                f"state {state}; no Python stack. Command: {cmd}\n",
            )
        else:
            parsed = _write_stacks(p, role, cmd, rounds.get(p.pid, []), w, t0)
            rep.stack_files = [rel, f"stacks/{p.pid}.json"]
            if parsed:
                out.threads[(None, p.pid)] = parsed[-1]
                wait = st.process_wait(parsed[-1])
                if wait is not None:
                    rep.wait, rep.wait_frame, rep.wait_category = (
                        wait.label,
                        wait.frame,
                        wait.category,
                    )
                if len(parsed) >= 2:
                    rep.moved = st.signature(parsed[0]) != st.signature(parsed[-1])
            failed = [d.error for d in rounds.get(p.pid, []) if not d.ok and d.error]
            if failed and not parsed:
                rep.capture_error = failed[-1]
        if not rep.stack_files:
            rep.stack_files = [rel]
        out.reports.append(rep)
    return out


def _write_stacks(
    p: ProcInfo, role: str, cmd: str, dumps: Sequence[Dump], w: BundleWriter, t0: float
) -> list[list[st.Thread]]:
    """``stacks/<pid>.txt`` and ``stacks/<pid>.json``; returns the parsed good dumps."""
    texts: list[str] = []
    docs: list[dict[str, Any]] = []
    parsed: list[list[st.Thread]] = []
    header = f"Process {p.pid}: {cmd}"
    for i, d in enumerate(dumps, 1):
        when = d.started_at - t0
        entry: dict[str, Any] = {"n": i, "at_s": round(when, 3), "how": d.how, "ok": d.ok}
        threads = d.threads()
        if d.ok and threads:
            parsed.append(threads)
            source = "py-spy --json" if d.json else "py-spy text"
            body = st.render_text(threads, header) if d.json else d.text
            texts.append(f"# dump {i} of {len(dumps)} (+{when:.1f} s, py-spy {d.how})\n{body}")
            entry["source"] = source
            entry["threads"] = _raw_threads(d) if d.json else st.to_pyspy_json(threads)
        else:
            error = d.error or "py-spy printed no thread"
            texts.append(f"# dump {i} of {len(dumps)} (+{when:.1f} s): py-spy failed: {error}\n")
            entry["error"] = error
        docs.append(entry)
    if not dumps:
        texts.append("# no dump taken (py-spy unavailable)\n")
    w.text(f"stacks/{p.pid}.txt", "\n".join(texts))
    w.json(f"stacks/{p.pid}.json", {"pid": p.pid, "role": role, "dumps": docs})
    return parsed


def _raw_threads(d: Dump) -> list[Any]:
    try:
        raw = json.loads(d.text)
    except ValueError:
        return []
    return raw if isinstance(raw, list) else []


def write_cores(
    w: BundleWriter,
    reports: Sequence[ProcessReport],
    odd: OddOne | None,
    *,
    py_spy: str | None,
    core_max: int,
    core_timeout_s: float,
    notes: list[str],
    console: Console | None,
) -> dict[str, Any]:
    """gcore the odd process out and its peers into ``cores/``, then read the Python stacks
    out of each core with ``py-spy dump --core`` (``cores/core.<pid>.py-spy.txt``); returns
    ``incident.json``'s ``cores``."""
    gcore = cr.find_gcore()
    targets = cr.choose_core_targets(reports, odd, core_max)
    if console is not None and gcore is not None and targets:
        names = ", ".join(t.role for t in targets)
        console.print(f"taking {len(targets)} core file(s) with gcore: {names}")
    with _text_in_cores([t.pid for t in targets]):
        results, skipped = cr.take_cores(
            targets, bundle=w.root, gcore=gcore, timeout_s=core_timeout_s
        )
    pattern = cr.read_core_pattern()
    readme = cr.render_readme(
        results,
        bundle=w.root,
        core_pattern=pattern,
        gcore=gcore,
        timeout_s=core_timeout_s,
        skipped=skipped,
    )
    pyspy_files = _py_spy_of_cores(w, results, py_spy, core_timeout_s)
    if pyspy_files:
        readme += (
            "\nPython stacks read from each core by `py-spy dump --core` (no gdb needed):\n"
            + "".join(f"  {rel}\n" for rel in pyspy_files.values())
        )
    w.text("cores/README.txt", readme)
    w.files.extend(r.file for r in results if r.ok and r.file)
    if gcore is None:
        notes.append(cr.INSTALL_HINT + "; see cores/README.txt")
    elif not targets:
        notes.append("core files: no live process to take a core of")
    else:
        notes.append(cr.notes_line(results))
    notes.extend(skipped)
    docs = []
    for r in results:
        d = r.to_dict()
        d["py_spy"] = pyspy_files.get(r.pid)
        docs.append(d)
    return {
        "gcore": gcore,
        "timeout_s": core_timeout_s,
        "max": core_max,
        "core_pattern": pattern,
        "core_pattern_hint": cr.core_pattern_hint(pattern),
        "results": docs,
        "skipped": skipped,
    }


#: ``/proc/<pid>/coredump_filter`` bit 2: file-backed private mappings (the text of the
#: executable and its libraries). gcore honours the filter; without this bit a core holds no
#: executable segment and ``py-spy dump --core`` cannot find the Python binary in it.
_FILE_PRIVATE = 0x4


@contextlib.contextmanager
def _text_in_cores(pids: Sequence[int]) -> Iterator[None]:
    """While the cores are taken, let them hold the executables' text (a few MiB for Python,
    some hundred MiB for torch's libraries); each process's own filter is put back after."""
    saved: dict[int, str] = {}
    for pid in pids:
        path = Path(f"/proc/{pid}/coredump_filter")
        try:
            old = path.read_text().strip()
            if not int(old, 16) & _FILE_PRIVATE:
                path.write_text(f"0x{int(old, 16) | _FILE_PRIVATE:x}")
                saved[pid] = old
        except (OSError, ValueError):
            continue
    try:
        yield
    finally:
        for pid, old in saved.items():
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/coredump_filter").write_text(f"0x{old}")


def _py_spy_of_cores(
    w: BundleWriter, results: Sequence[cr.CoreResult], py_spy: str | None, timeout_s: float
) -> dict[int, str]:
    """``py-spy dump --core`` of every core taken, in parallel, each with the core deadline."""
    done = [r for r in results if r.ok and r.file]
    if py_spy is None or not done:
        return {}
    out: dict[int, str] = {}
    with cf.ThreadPoolExecutor(max_workers=len(done)) as pool:
        futs = {
            pool.submit(
                dump_core,
                w.root / str(r.file),
                py_spy=py_spy,
                executable=r.exe or None,
                timeout=timeout_s,
            ): r
            for r in done
        }
        for fut in cf.as_completed(futs):
            r = futs[fut]
            rel = f"{r.file}.py-spy.txt"
            w.text(rel, fut.result())
            out[r.pid] = rel
    return out

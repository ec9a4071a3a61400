"""Capture across nodes: ``harness dump --hosts h1,h2`` and ``--slurm-job ID``.

The seeds' recipe, automated: one small POSIX ``sh`` script runs on every node (over ssh, pdsh
when installed, a remote shell of the user's choice such as ``docker exec {host}``, or
``srun --jobid ID --overlap --gres=gpu:0``); it prints the node name, the process list and two
``py-spy dump --native`` rounds of every matching process (``--json`` when the node's py-spy
has it), each dump with its own ``timeout`` and a ``--nonblocking`` fallback. The outputs are
parsed and merged into one bundle whose every process line names its node. A node that stops
answering keeps what it printed before the deadline, and never costs the other nodes their
dumps (pdsh and srun print every node's output through one pipe). Building the commands and
parsing the output are pure functions (unit-tested); only :func:`run_remote` and
:func:`capture_remote` do I/O.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import BadInput, EnvironmentProblem
from harness.watchdog import matching as mt
from harness.watchdog import signatures as sg
from harness.watchdog import stacks as st
from harness.watchdog.redact import Redactor
from harness.watchdog.remotecmd import (
    MARK,
    pdsh_command,
    rsh_command,
    srun_command,
    ssh_command,
)
from harness.watchdog.rules import Verdict
from harness.watchdog.subproc import Completed, run_with_deadline
from harness.watchdog.summary import (
    OddOne,
    ProcessReport,
    odd_one_out,
    processes_table,
    render_summary,
    role_name,
    where_line,
)


def split_prefixed(text: str) -> dict[str, str]:
    """pdsh (``host: line``) or ``srun --label`` (``3: line``) output, per prefix.

    pdsh's own messages about a node (``pdsh@login: n8: ssh exited with exit code 255``) are
    filed under that node.
    """
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        prefix, sep, rest = line.partition(": ")
        if prefix.startswith("pdsh@") and sep:
            prefix, sep, rest = rest.partition(": ")
        if not sep or " " in prefix.strip() or not prefix.strip():
            continue
        out.setdefault(prefix.strip(), []).append(rest)
    return {k: "\n".join(v) + "\n" for k, v in out.items()}


@dataclass
class NodeProc:
    pid: int
    ppid: int
    state: str
    cpu: float
    threads: int
    args: str


@dataclass
class NodeDump:
    """What one node's script printed."""

    host: str
    procs: dict[int, NodeProc] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    stacks: dict[int, list[str]] = field(default_factory=dict)
    answered: bool = False  # the script ran there (it printed the node's name)
    complete: bool = False  # ... and to its end
    error: str | None = None  # why not (ssh's last words, a timeout)


def parse_node_output(text: str, fallback_host: str = "?") -> NodeDump:
    """Parse one node's script output (sections between ``#harness-`` markers)."""
    node = NodeDump(fallback_host)
    section = ""
    current: tuple[int, int] | None = None
    buf: list[str] = []

    def flush() -> None:
        if current is not None:
            node.stacks.setdefault(current[0], []).append("\n".join(buf).strip("\n") + "\n")

    for line in text.splitlines():
        if line.startswith(MARK):
            flush()
            current, buf = None, []
            word, _, rest = line[len(MARK) :].partition(" ")
            section = word
            if word == "host":
                node.host = rest.strip() or fallback_host
                node.answered = True
            elif word == "pids":
                node.pids = [int(p) for p in rest.split() if p.isdigit()]
            elif word == "stack":
                parts = rest.split()
                if parts and parts[0].isdigit():
                    current = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 1)
            elif word == "end":
                node.complete = True
            continue
        if section == "ps":
            cols = line.split(None, 5)
            if len(cols) >= 5 and cols[0].isdigit():
                try:
                    proc = NodeProc(
                        int(cols[0]),
                        int(cols[1]),
                        cols[2][:1],
                        float(cols[3]),
                        int(cols[4]),
                        cols[5] if len(cols) > 5 else "",
                    )
                except ValueError:
                    continue
                node.procs[proc.pid] = proc
        elif current is not None:
            buf.append(line)
    flush()
    return node


def node_reports(node: NodeDump) -> tuple[list[ProcessReport], dict[str, str]]:
    """Process reports (host set) and stack files (``stacks/<host>-<pid>.txt``) of one node."""
    reports, files, _threads = _node_reports(node)
    return reports, files


def _node_reports(
    node: NodeDump,
) -> tuple[list[ProcessReport], dict[str, str], dict[tuple[str | None, int], list[st.Thread]]]:
    reports: list[ProcessReport] = []
    files: dict[str, str] = {}
    threads: dict[tuple[str | None, int], list[st.Thread]] = {}
    for pid in node.pids:
        info = node.procs.get(pid)
        args = info.args if info else ""
        argv = args.split()
        rep = ProcessReport(
            pid=pid,
            role=role_name(argv[0] if argv else "?", argv),
            state=info.state if info else "?",
            cpu_percent=info.cpu if info else None,
            threads=info.threads if info else None,
            cmdline=args,
            ppid=info.ppid if info else None,
            host=node.host,
        )
        dumps = node.stacks.get(pid, [])
        parsed = [_parse(d) for d in dumps]
        parsed = [p for p in parsed if p]
        if parsed:
            threads[(node.host, pid)] = parsed[-1]
            wait = st.process_wait(parsed[-1])
            if wait is not None:
                rep.wait, rep.wait_frame, rep.wait_category = wait.label, wait.frame, wait.category
            if len(parsed) >= 2:
                rep.moved = st.signature(parsed[0]) != st.signature(parsed[-1])
        elif dumps:
            rep.capture_error = (
                dumps[-1].strip().splitlines()[-1][:200]
                if dumps[-1].strip()
                else "py-spy printed nothing"
            )
            if "Failed to find python version" in dumps[-1]:
                rep.python = False
        rel = f"stacks/{_safe(node.host)}-{pid}.txt"
        files[rel] = (
            "".join(
                f"# node {node.host}, dump {i} of {len(dumps)}\n{_for_people(d, pid, args)}\n"
                for i, d in enumerate(dumps, 1)
            )
            or f"# node {node.host}: no dump\n"
        )
        rep.stack_files = [rel]
        if any(_is_json(d) for d in dumps):
            rel_json = rel.removesuffix(".txt") + ".json"
            docs = [
                {"n": i, "source": "py-spy --json", "threads": json.loads(d)}
                if _is_json(d)
                else {"n": i, "source": "py-spy text", "threads": st.to_pyspy_json(_parse(d))}
                for i, d in enumerate(dumps, 1)
            ]
            files[rel_json] = json.dumps(
                {"pid": pid, "host": node.host, "role": rep.role, "dumps": docs}, indent=2
            )
            rep.stack_files.append(rel_json)
        reports.append(rep)
    return reports, files, threads


def _is_json(dump: str) -> bool:
    if not dump.lstrip().startswith("["):
        return False
    try:
        return isinstance(json.loads(dump), list)
    except ValueError:
        return False


def _parse(dump: str) -> list[st.Thread]:
    """A node's dump: py-spy's JSON where its py-spy has ``--json``, else its text."""
    return st.parse_json_dump(dump) if _is_json(dump) else st.parse_dump(dump)


def _for_people(dump: str, pid: int, args: str) -> str:
    return st.render_text(_parse(dump), f"Process {pid}: {args}") if _is_json(dump) else dump


def _safe(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", host)


def run_remote(
    *,
    hosts: Sequence[str] = (),
    slurm_job: str | None = None,
    script: str,
    timeout_s: float,
    rsh: Sequence[str] | None = None,
) -> list[NodeDump]:
    """Run ``script`` on every node and parse what came back (one NodeDump per node).

    ``rsh`` is a remote shell template (:func:`rsh_command`); without it, nodes are reached
    with pdsh when installed (several hosts), else with one ssh per host. Every node that did
    not finish says why in ``error``; what it printed before its deadline is kept.
    """
    if slurm_job:
        if shutil.which("srun") is None:
            raise EnvironmentProblem(
                "srun is not installed here",
                hint="run harness dump --slurm-job on a Slurm login node",
            )
        nodes = _slurm_nodes(slurm_job)
        done = run_with_deadline(srun_command(slurm_job, script, nodes=nodes), timeout_s)
        found = [
            _node(text, f"task{k}", done, timeout_s, keep_reported_name=True)
            for k, text in split_prefixed(done.output).items()
        ]
        if not found:
            found = [_node(done.output, f"job {slurm_job}", done, timeout_s)]
        return found
    if not hosts:
        raise BadInput("no hosts given")
    if rsh is None and shutil.which("pdsh") is not None and len(hosts) > 1:
        done = run_with_deadline(
            pdsh_command(hosts, script), timeout_s, env={"PDSH_RCMD_TYPE": "ssh"}
        )
        parts = split_prefixed(done.output)
        return sorted(
            (_node(parts.get(h, ""), h, done, timeout_s) for h in dict.fromkeys(hosts)),
            key=lambda n: n.host,
        )
    if rsh is None and shutil.which("ssh") is None:
        raise EnvironmentProblem("ssh is not installed here", hint="apt-get install openssh-client")

    def one(host: str) -> NodeDump:
        argv = ssh_command(host, script) if rsh is None else rsh_command(rsh, host, script)
        done = run_with_deadline(argv, timeout_s)
        return _node(done.output, host, done, timeout_s)

    unique = list(dict.fromkeys(hosts))
    with cf.ThreadPoolExecutor(max_workers=min(32, len(unique))) as pool:
        nodes_out = list(pool.map(one, unique))
    return sorted(nodes_out, key=lambda n: n.host)


def _node(
    text: str, name: str, done: Completed, timeout_s: float, *, keep_reported_name: bool = False
) -> NodeDump:
    """One node's output, parsed, named as the user named it, with the reason it is short."""
    node = parse_node_output(text, name)
    if not keep_reported_name:
        node.host = name
    if node.complete:
        return node
    if done.timed_out:
        node.error = f"no answer within {timeout_s:g} s" + (
            " (what it printed before is kept)" if node.answered else ""
        )
    else:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        last = lines[-1].strip()[:300] if lines else ""
        code = f"exit {done.returncode}" if done.returncode not in (None, 0) else ""
        node.error = ": ".join(x for x in (code, last) if x) or "no output"
    return node


def _slurm_nodes(job_id: str) -> int | None:
    """The job's node count; :class:`BadInput` for a job SLURM does not know or that is not
    running (srun would wait for its allocation)."""
    if shutil.which("squeue") is None:
        return None
    done = run_with_deadline(["squeue", "-h", "-j", job_id, "-o", "%D %T"], 30)
    out = done.output.strip()
    if done.returncode not in (0, None) or not out:
        said = out.splitlines()[-1].strip() if out else "not listed"
        raise BadInput(
            f"no running SLURM job {job_id} (squeue: {said})",
            hint="squeue -u $USER lists your jobs",
        )
    count, _, state = out.splitlines()[0].partition(" ")
    if state and state != "RUNNING":
        raise BadInput(
            f"SLURM job {job_id} is {state}: only a running job has processes to dump",
            hint="squeue -j " + job_id,
        )
    return int(count) if count.isdigit() else None


def capture_remote(
    out_dir: Path,
    nodes: Sequence[NodeDump],
    *,
    verdict: Verdict | None = None,
    redactor: Redactor | None = None,
    started_at: float | None = None,
    catalogue: sg.Catalogue | None = None,
) -> Path:
    """Merge the nodes' dumps into one bundle in ``out_dir``; returns ``out_dir``. The known
    signatures (``catalogue``, default: the shipped one after ``$HARNESS_SIGNATURES``' files)
    are matched against the stacks and process states (the nodes' logs stay on the nodes)."""
    return write_remote_bundle(
        out_dir,
        nodes,
        verdict=verdict,
        redactor=redactor,
        started_at=started_at,
        catalogue=catalogue,
    ).path


@dataclass
class RemoteBundle:
    """What :func:`write_remote_bundle` wrote and found."""

    path: Path
    reports: list[ProcessReport]
    odd: OddOne | None
    likely: str
    signatures: list[dict[str, Any]]
    summary_lines: list[str]


def write_remote_bundle(
    out_dir: Path,
    nodes: Sequence[NodeDump],
    *,
    verdict: Verdict | None = None,
    also: Sequence[Verdict] = (),
    redactor: Redactor | None = None,
    started_at: float | None = None,
    catalogue: sg.Catalogue | None = None,
    logs: Sequence[mt.LogLine] = (),
    notes: Sequence[str] = (),
    files: Mapping[str, str] | None = None,
    profiles: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> RemoteBundle:
    """:func:`capture_remote` for a caller that has more than the dumps (a multi-node server's
    startup incident): its logs and other files for the signatures (``logs``: lines of files
    written into the bundle, ``files``: relative path -> text), ``notes``, the plan's
    ``profiles``, more ``incident.json`` keys (``extra``)."""
    verdict = verdict or Verdict("manual", "manual", f"on-demand dump of {len(nodes)} node(s)")
    redactor = redactor or Redactor()
    out_dir.mkdir(parents=True, exist_ok=True)
    reports: list[ProcessReport] = []
    written: dict[str, str] = dict(files or {})
    threads: dict[tuple[str | None, int], list[st.Thread]] = {}
    all_notes: list[str] = list(notes)
    for node in nodes:
        r, f, t = _node_reports(node)
        reports += r
        written.update(f)
        threads.update(t)
        if not node.answered:
            all_notes.append(f"node {node.host}: no answer ({node.error or 'no output'})")
            continue
        if not node.complete:
            all_notes.append(
                f"node {node.host}: incomplete output ({node.error or 'no end marker'})"
            )
        if not node.pids:
            all_notes.append(f"node {node.host}: no matching process")
    odd = odd_one_out(reports)
    facts = mt.Facts(
        kind=verdict.kind,
        rule=verdict.rule,
        logs=logs,
        processes=reports,
        stacks=threads,
        odd=odd,
        profiles=profiles,
    )
    found = mt.match_catalogue(catalogue or sg.load_catalogue(sg.user_files()), facts)
    now = time.time()
    likely = mt.likely_line(found)
    matches = [m.to_dict() for m in found]
    written["processes.txt"] = processes_table(reports)
    written["incident.json"] = json.dumps(
        {
            "kind": verdict.kind,
            "rule": verdict.rule,
            "detail": verdict.detail,
            "detected_at": dt.datetime.fromtimestamp(started_at or now, dt.UTC).isoformat(),
            "also": [v.to_dict() for v in also],
            "nodes": [n.host for n in nodes],
            "odd_one_out": None
            if odd is None
            else {"pid": odd.pid, "process": odd.label, "reason": odd.reason},
            "where": where_line(reports, odd),
            "likely": likely,
            "signatures": matches,
            "processes": [r.to_dict() for r in reports],
            "notes": all_notes,
            **(extra or {}),
        },
        indent=2,
    )
    stamp = dt.datetime.fromtimestamp(started_at or now, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    summary = render_summary(
        verdict=verdict,
        detected_at=stamp,
        processes=reports,
        odd=odd,
        also=also,
        notes=all_notes,
        files=sorted({*written, "summary.md"}),
        likely=likely,
        signatures=matches,
    )
    written["summary.md"] = summary
    for rel, text in written.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(redactor.text(text), encoding="utf-8")
    return RemoteBundle(out_dir, reports, odd, likely, matches, summary.splitlines())

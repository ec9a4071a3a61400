"""The incident of a multi-node server (``--nodes``): every node's stacks over ssh, every node's
log, and the network settings of each node checked against its facts.

What :func:`harness.watchdog.capture.capture_incident` does for the processes of one machine,
done across nodes: :func:`harness.watchdog.remote.run_remote` runs the dump script on every
node (py-spy twice, process states), the outputs are merged into one bundle with the node in
every row, and the bundle gets what only harness has: the tail of each node's log
(``server.log.tail``, ``server.<host>.log.tail``), the plan, each node's environment (secrets
redacted) and ``network.txt``, the findings of :func:`harness.nodeplan.network_problems` (a
Gloo/NCCL interface that is loopback, missing, or on none of the head's networks; a
``VLLM_HOST_IP`` that is not the node's). The logs and ``network.txt`` are matched against the
signature catalogue with the stacks, so a startup that hangs because one node announced an
address the others cannot reach says so on line 3 of ``summary.md``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.nodeplan import network_problems
from harness.redact import redact_launch_spec
from harness.rundir import RunDir
from harness.spec import LaunchSpec
from harness.watchdog import matching as mt
from harness.watchdog.capture import CaptureOptions, Console, Incident
from harness.watchdog.redact import Redactor
from harness.watchdog.remote import run_remote, write_remote_bundle
from harness.watchdog.remotecmd import DEFAULT_MATCH, remote_script
from harness.watchdog.rules import Verdict

#: Bytes of each node's log kept in the bundle (the same as for one machine).
LOG_TAIL_BYTES = 256 * 1024
#: The file of network findings in the bundle (matched like a log by the signatures).
NETWORK_FILE = "network.txt"


def _tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def network_report(spec: LaunchSpec) -> str:
    """``network.txt``: each node's address, interfaces and network variables, then the
    findings (one per line, ``node HOST: ...``), or that there are none."""
    lines = []
    for node in spec.nodes:
        pinned = {k: v for k, v in node.env.items() if k.endswith("SOCKET_IFNAME")}
        pinned_text = ", ".join(f"{k}={v}" for k, v in sorted(pinned.items())) or "none"
        interfaces = ", ".join(f"{k} {v or '-'}" for k, v in sorted(node.interfaces.items()))
        lines.append(
            f"# {node.host} ({node.role}, rank {node.rank}): address {node.address}"
            f" (reached by harness at {node.reached_address or '?'}), "
            f"VLLM_HOST_IP={node.env.get('VLLM_HOST_IP', 'unset')}, {pinned_text}; "
            f"interfaces: {interfaces or 'unknown'}"
        )
    problems = network_problems(spec.nodes)
    lines += problems or ["no finding: every node's interfaces and addresses look reachable"]
    return "\n".join(lines) + "\n"


def capture_nodes_incident(
    run: RunDir,
    spec: LaunchSpec,
    verdict: Verdict,
    *,
    also: Sequence[Verdict] = (),
    options: CaptureOptions | None = None,
    console: Console | None = None,
    rsh: Sequence[str] | None = None,
) -> Incident:
    """Capture every node of ``spec`` into the run's next incident directory."""
    opts = options or CaptureOptions()
    started = time.monotonic()
    detected = time.time()
    out_dir = run.next_incident_dir()
    hosts = [n.host for n in spec.nodes]
    if console is not None:
        console.print(f"[bold]capturing[/] {len(hosts)} node(s) over ssh into {out_dir}")
    script = remote_script(match=DEFAULT_MATCH, gap_s=opts.gap_s, timeout_s=opts.timeout_s)
    dumps = run_remote(
        hosts=hosts,
        script=script,
        timeout_s=2 * opts.timeout_s + opts.gap_s + 60,
        rsh=rsh,
    )
    files: dict[str, str] = {}
    logs: list[mt.LogLine] = []
    for node in spec.nodes:
        name = f"{node.log_name}.tail"
        files[name] = _tail(run.path / node.log_name)
        logs += mt.log_lines(name, files[name])
        files[f"env.{node.host}.txt"] = "".join(f"{k}={v}\n" for k, v in sorted(node.env.items()))
    files[NETWORK_FILE] = network_report(spec)
    logs += mt.log_lines(NETWORK_FILE, files[NETWORK_FILE])
    files["launch_spec.json"] = spec_json(spec)
    redactor = Redactor.from_envs(os.environ, spec.env, *(n.env for n in spec.nodes))
    bundle = write_remote_bundle(
        out_dir,
        dumps,
        verdict=verdict,
        also=also,
        redactor=redactor,
        started_at=detected,
        logs=logs,
        files=files,
        profiles=spec.profiles,
        extra={"run_id": run.run_id, "capture_s": round(time.monotonic() - started, 3)},
    )
    lines = bundle.summary_lines
    incident = Incident(
        out_dir,
        verdict,
        bundle.reports,
        bundle.odd,
        lines[0],
        lines[1],
        time.monotonic() - started,
        list(also),
        bundle.likely,
        bundle.signatures,
    )
    if console is not None:
        console.print(f"[bold red]{incident.headline}[/]")
        console.print(incident.where, markup=False)
        console.print(incident.likely, markup=False)
        console.print(f"bundle: {out_dir}", markup=False)
    return incident


def spec_json(spec: LaunchSpec) -> str:
    """The plan as ``launch_spec.json`` writes it (secrets masked)."""
    data: Mapping[str, Any] = redact_launch_spec(spec.to_dict())
    return json.dumps(data, indent=2)

"""The commands a cross-node capture runs (pure): the dump script every node runs, and the
argv that runs it over ssh, pdsh, ``srun --jobid`` or a remote shell of the user's choice
(:mod:`harness.watchdog.remote` runs them and merges what they print)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from harness.errors import BadInput
from harness.nodefacts import ssh_argv

# Processes worth a stack on a node: Python interpreters, vLLM's renamed processes, launchers.
DEFAULT_MATCH = r"python|VLLM::|torchrun|lmdeploy|deepspeed|accelerate"
MARK = "#harness-"

_SCRIPT = r"""PYSPY={py_spy}
echo "{mark}host $(hostname)"
echo "{mark}ps"
# -ww: whole command lines (ps cuts them at 80 columns under srun, and --match must see them)
ps -ww -eo pid=,ppid=,stat=,pcpu=,nlwp=,args= | grep -v -e '{mark}' -e 'grep -v -e'
PIDS=$(ps -ww -u "$(id -u)" -o pid=,args= | grep -E -e {match} | grep -v -e '{mark}' -e 'grep -E' \
  | awk '{{print $1}}')
echo "{mark}pids" $PIDS  # unquoted: one line, however many pids
TMP=$(mktemp -d)
FMT=
"$PYSPY" dump --help 2>/dev/null | grep -q -e ' --json' && FMT=--json
r=1
while [ $r -le {rounds} ]; do
  for p in $PIDS; do
    ( timeout {timeout} "$PYSPY" dump $FMT --native --pid "$p" > "$TMP/$p.$r" 2>&1 \
      || timeout {timeout} "$PYSPY" dump $FMT --nonblocking --pid "$p" > "$TMP/$p.$r" 2>&1 \
      || echo "py-spy failed (exit $?)" >> "$TMP/$p.$r" ) &
  done
  wait
  [ $r -lt {rounds} ] && sleep {gap}
  r=$((r + 1))
done
for p in $PIDS; do
  r=1
  while [ $r -le {rounds} ]; do
    echo "{mark}stack $p $r"
    cat "$TMP/$p.$r" 2>/dev/null
    r=$((r + 1))
  done
done
rm -rf "$TMP"
echo "{mark}end"
"""


def remote_script(
    *,
    match: str = DEFAULT_MATCH,
    py_spy: str = "py-spy",
    rounds: int = 2,
    gap_s: float = 2.0,
    timeout_s: float = 10.0,
) -> str:
    """The ``sh`` script every node runs (prints markers ``#harness-...`` between sections)."""
    return _SCRIPT.format(
        py_spy=shlex.quote(py_spy),
        match=shlex.quote(match),
        rounds=int(rounds),
        gap=f"{gap_s:g}",
        timeout=f"{timeout_s:g}",
        mark=MARK,
    )


def ssh_command(host: str, script: str, *, connect_timeout_s: int = 10) -> list[str]:
    """``ssh`` argv running ``script`` with ``sh`` on ``host`` (no prompts: BatchMode)."""
    return ssh_argv(host, "sh -c " + shlex.quote(script), connect_timeout_s=connect_timeout_s)


def pdsh_command(hosts: Sequence[str], script: str) -> list[str]:
    """``pdsh`` argv (run with ``PDSH_RCMD_TYPE=ssh``): every output line is ``host: line``."""
    return ["pdsh", "-S", "-w", ",".join(hosts), "sh -c " + shlex.quote(script)]


def srun_command(job_id: str, script: str, *, nodes: int | None = None) -> list[str]:
    """``srun`` argv that joins job ``job_id`` without waiting for its GPUs (the seeds' flags).

    ``--overlap`` shares the job's resources, ``--gres=gpu:0`` keeps the step from waiting for
    the training step's GPUs, ``--label`` prefixes each line with the task number.
    """
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?(\.[0-9]+)?", job_id):
        raise BadInput(f"not a Slurm job id: {job_id!r}")
    argv = [
        "srun",
        f"--jobid={job_id}",
        "--overlap",
        "--gres=gpu:0",
        "--ntasks-per-node=1",
        "--label",
        "--kill-on-bad-exit=0",
    ]
    if nodes:
        argv.append(f"--nodes={nodes}")
    return [*argv, "sh", "-c", script]


def rsh_command(template: Sequence[str], host: str, script: str) -> list[str]:
    """A remote shell of the user's choice: ``{host}`` replaced, then ``sh -c SCRIPT``.

    For commands that take the program as separate arguments: ``docker exec {host}``,
    ``kubectl exec {host} --``, a wrapper script. (ssh joins its arguments into one string:
    it has its own path, configured in ``~/.ssh/config``.)
    """
    if not any("{host}" in token for token in template):
        raise BadInput(
            f"--rsh {shlex.join(template)!r} has no {{host}} placeholder",
            hint="e.g. --rsh 'docker exec {host}'",
        )
    return [token.replace("{host}", host) for token in template] + ["sh", "-c", script]

from __future__ import annotations

import shlex
from pathlib import Path

from harness.watchdog.cores import (
    CoreResult,
    choose_core_targets,
    core_limit_hint,
    core_path,
    core_pattern_hint,
    estimate_core_bytes,
    gcore_argv,
    gdb_command,
    notes_line,
    parse_core_limit,
    render_readme,
)
from harness.watchdog.summary import OddOne, ProcessReport


def _tp(n_workers: int, stopped: int) -> list[ProcessReport]:
    procs = [
        ProcessReport(10, "APIServer", "S", ppid=1, moved=False),
        ProcessReport(11, "EngineCore", "S", ppid=10, moved=False),
        ProcessReport(12, "resource_tracker", "S", ppid=10, moved=False),
    ]
    for i in range(n_workers):
        state = "T" if i == stopped else "S"
        procs.append(ProcessReport(20 + i, f"Worker_TP{i}", state, ppid=11, moved=False))
    return procs


def test_odd_one_first_then_its_peers_capped() -> None:
    procs = _tp(8, stopped=5)
    odd = OddOne(25, "Worker_TP5", "stopped (state T)")
    chosen = choose_core_targets(procs, odd, 4)
    assert [t.pid for t in chosen] == [25, 20, 21, 22]
    assert chosen[0].why == "odd one out: stopped (state T)"
    assert chosen[1].why == "peer of Worker_TP5"
    # The API server and the engine core are not peers of a worker.
    assert {t.pid for t in choose_core_targets(procs, odd, 100)} == set(range(20, 28))
    assert choose_core_targets(procs, odd, 0) == []


def test_peers_with_the_same_parent_come_first_and_dedup_suffixes_are_ignored() -> None:
    procs = [
        ProcessReport(1, "python3 -c[1]", "S", ppid=0),
        ProcessReport(5, "python3 -c[5]", "S", ppid=99),
        ProcessReport(7, "python3 -c[7]", "T", ppid=2),
        ProcessReport(8, "python3 -c[8]", "S", ppid=2),
        ProcessReport(9, "python3 -c[9]", "gone", ppid=2),
        ProcessReport(3, "python3 train.py", "S", ppid=0),
    ]
    chosen = choose_core_targets(procs, OddOne(7, "python3 -c[7]", "stopped (state T)"), 4)
    assert [t.pid for t in chosen] == [7, 8, 1, 5]


def test_without_an_odd_one_stuck_python_processes_first() -> None:
    procs = [
        ProcessReport(1, "launcher", "S", moved=True),
        ProcessReport(2, "rank0", "S", moved=False),
        ProcessReport(3, "sh", "S", python=False),
        ProcessReport(4, "rank1", "S", moved=None),
        ProcessReport(5, "rank2", "Z"),
        ProcessReport(6, "rank3", "S", host="node-2", moved=False),
    ]
    assert [t.pid for t in choose_core_targets(procs, None, 2)] == [2, 1]
    assert [t.pid for t in choose_core_targets(procs, None, 10)] == [2, 1, 4]
    # A GPU named as the odd one is not a process: same as no odd one.
    gpu = OddOne(-1, "GPU 3", "at 99% while the other GPUs idle")
    assert [t.pid for t in choose_core_targets(procs, gpu, 1)] == [2]
    # Nothing Python: any live process (a native server given with --pid).
    native = [ProcessReport(3, "server", "S", python=False)]
    assert [(t.pid, t.why) for t in choose_core_targets(native, None, 4)] == [(3, "process")]


def test_commands() -> None:
    prefix = Path("/b/cores/core")
    assert gcore_argv("/usr/bin/gcore", prefix, 42) == [
        "/usr/bin/gcore",
        "-o",
        "/b/cores/core",
        "42",
    ]
    assert core_path(prefix, 42) == Path("/b/cores/core.42")
    cmd = gdb_command("/usr/bin/python3.11", Path("/b/my cores/core.42"))
    assert shlex.split(cmd) == [
        "gdb",
        "-q",
        "/usr/bin/python3.11",
        "-c",
        "/b/my cores/core.42",
        "-ex",
        "set pagination off",
        "-ex",
        "thread apply all bt",
    ]


def test_core_pattern_hints() -> None:
    apport = core_pattern_hint("|/usr/share/apport/apport -p%p -s%s -c%c -d%d -P%P -u%u -g%g -- %E")
    assert "apport" in apport and "/var/crash" in apport and "/var/lib/apport/coredump" in apport
    assert "sudo sysctl -w kernel.core_pattern=/tmp/core-%e.%p.%h.%t" in apport
    systemd = core_pattern_hint(
        "|/lib/systemd/systemd-coredump %P %u %g %s %t 9223372036854775808 %h"
    )
    assert "coredumpctl" in systemd
    assert "piped to /opt/x/collect" in core_pattern_hint("|/opt/x/collect %p")
    assert "written to /var/cores" in core_pattern_hint("/var/cores/core-%e.%p\n")
    assert "working directory" in core_pattern_hint("core")
    assert "empty" in core_pattern_hint("")
    assert "not readable" in core_pattern_hint(None)


LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max file size             unlimited            unlimited            bytes
Max core file size        0                    unlimited            bytes
Max resident set          unlimited            unlimited            bytes
"""


def test_core_limit() -> None:
    assert parse_core_limit(LIMITS) == ("0", "unlimited")
    raised = "Max core file size        unlimited            unlimited            bytes\n"
    assert parse_core_limit(raised) == ("unlimited", "unlimited")
    assert parse_core_limit("garbage") is None
    hint = core_limit_hint(("0", "unlimited"), "Worker_TP1")
    assert hint is not None and "ulimit -c unlimited" in hint and "limits.conf" in hint
    assert core_limit_hint(("unlimited", "unlimited")) is None
    assert core_limit_hint(None) is None


def test_readme_and_notes() -> None:
    ok = CoreResult(
        42,
        "Worker_TP1",
        "odd one out: stopped (state T)",
        exe="/usr/bin/python3.11",
        file="cores/core.42",
        bytes=3 * 2**30,
        seconds=3.5,
        ok=True,
        core_limit=("0", "unlimited"),
        command=gdb_command("/usr/bin/python3.11", "/b/cores/core.42"),
    )
    late = CoreResult(
        43,
        "Worker_TP0",
        "peer of Worker_TP1",
        timed_out=True,
        error="gcore timed out after 60 s and was killed (partial core removed)",
        core_limit=("unlimited", "unlimited"),
    )
    text = render_readme(
        [ok, late],
        bundle=Path("/b"),
        core_pattern="|/usr/share/apport/apport %p",
        gcore="/usr/bin/gcore",
        timeout_s=60,
        skipped=["EngineCore (pid 7) skipped: ..."],
    )
    assert "cores/core.42  3.0 GiB  in 3.5 s  Worker_TP1" in text
    assert "gdb -q /usr/bin/python3.11 -c /b/cores/core.42" in text
    assert "no core: Worker_TP0 (pid 43; peer of Worker_TP1): gcore timed out" in text
    assert "NOT redacted" in text
    assert "/proc/sys/kernel/core_pattern: |/usr/share/apport/apport %p" in text
    assert "Worker_TP1: core limit (ulimit -c) 0" in text
    assert "EngineCore (pid 7) skipped" in text
    line = notes_line([ok, late])
    assert line.startswith("core files: cores/core.42 Worker_TP1 (3.0 GiB, 3.5 s)")
    assert "failed: Worker_TP0: gcore timed out" in line
    missing = render_readme([], bundle=Path("/b"), core_pattern="core", gcore=None, timeout_s=60)
    assert "apt-get install gdb" in missing and "kill -ABRT" in missing


MAPS = """\
55d0c0000000-55d0c0001000 r--p 00000000 fd:01 1234 /usr/bin/python3.11
55d0c0001000-55d0c0003000 rw-p 00001000 fd:01 1234 /usr/bin/python3.11
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0040000000 rw-p 00000000 00:00 0
7f0040000000-7f0080000000 ---p 00000000 00:00 0
7f0080000000-7f0080100000 rw-s 00000000 00:1a 99 /dev/shm/psm_1234
7f0090000000-7f0090400000 r-xp 00000000 fd:01 555 /usr/lib/libtorch_cpu.so
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7ffd00100000-7ffd00104000 r--p 00000000 00:00 0 [vvar]
7ffd00104000-7ffd00106000 r-xp 00000000 00:00 0 [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
"""


def test_core_size_estimate_counts_anonymous_shared_and_written_mappings() -> None:
    expected = (
        0x2000  # the interpreter's written data
        + 0x100000  # heap
        + 0x40000000  # anonymous, touched or not
        + 0x40000000  # PROT_NONE reservation: gdb writes it too
        + 0x100000  # /dev/shm
        + 0x21000  # stack
    )
    assert estimate_core_bytes(MAPS) == expected
    assert estimate_core_bytes("garbage\n\n") == 0

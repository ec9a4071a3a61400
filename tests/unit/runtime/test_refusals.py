"""Why Docker refused a container: a refused ulimit named against /proc limits (pure)."""

from __future__ import annotations

from harness.errors import DockerProblem
from harness.runtime.refusals import parse_proc_limits, refused_ulimit, ulimit_problem

PROC_LIMITS = """\
Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max stack size            8388608              unlimited            bytes
Max core file size        0                    unlimited            bytes
Max processes             96364                96364                processes
Max open files            20000                20000                files
Max locked memory         8388608              8388608              bytes
Max realtime timeout      unlimited            unlimited            us
"""


def test_parse_proc_limits() -> None:
    limits = parse_proc_limits(PROC_LIMITS)
    assert limits["memlock"] == (8388608, 8388608)
    assert limits["nofile"] == (20000, 20000)
    assert limits["stack"] == (8388608, -1)
    assert limits["rttime"] == (-1, -1)


def test_refused_ulimit_is_named() -> None:
    limits = parse_proc_limits(PROC_LIMITS)
    runc = (
        "failed to create shim task: OCI runtime create failed: runc create failed: unable to "
        "start container process: error during container init: error setting rlimits for ready "
        "process: error setting rlimit type 8: operation not permitted: unknown"
    )
    assert refused_ulimit(runc, {"stack": 1, "memlock": -1}, limits) == "memlock"
    # Without the type number: the one above the hard limit.
    vague = "error setting rlimits for ready process: operation not permitted"
    assert refused_ulimit(vague, {"core": -1, "nofile": 30000}, limits) == "nofile"
    assert refused_ulimit("no such image", {"nofile": 30000}, limits) is None


def test_ulimit_problem_is_one_clear_line() -> None:
    limits = parse_proc_limits(PROC_LIMITS)
    problem = ulimit_problem("memlock", -1, limits, "/proc/self/limits")
    assert isinstance(problem, DockerProblem)
    assert problem.exit_code == 3
    assert "\n" not in problem.message
    assert "memlock=unlimited" in problem.message
    assert "8388608" in problem.message
    assert "/proc/self/limits" in problem.message
    assert problem.hint is not None
    assert "container.ulimits.memlock" in problem.hint
    assert "8388608 or less" in problem.hint

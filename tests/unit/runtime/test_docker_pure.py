"""Pure parts of the Docker runtime: create arguments, refused-ulimit explanations."""

from __future__ import annotations

import pytest

from harness.errors import BadInput, DockerProblem
from harness.runtime.docker import (
    LABEL_OWNER_PID,
    LABEL_STOP_GRACE,
    LogCursor,
    ResumeFilter,
    create_kwargs,
    docker_client,
    docker_down,
    parse_proc_limits,
    refused_ulimit,
    split_timestamp,
    ulimit_problem,
)
from harness.spec import ContainerSpec, Deadlines, LaunchSpec, VolumeSpec

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


def make_spec(**container: object) -> LaunchSpec:
    c: dict[str, object] = {
        "image": "img:1",
        "name": "harness-r1",
        "ulimits": {"memlock": -1, "stack": 67108864},
        "cap_add": ("SYS_PTRACE",),
        "volumes": {"/m": VolumeSpec(bind="/m", mode="ro")},
        "labels": {"harness.run_id": "r1"},
    }
    c.update(container)
    return LaunchSpec(
        run_id="r1",
        run_dir="/runs/r1",
        engine="vllm",
        model="/m",
        tp=2,
        profiles=["debug"],
        runtime="docker",
        host="127.0.0.1",
        port=8000,
        argv=["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"],
        env={"CUDA_LAUNCH_BLOCKING": "1"},
        container=ContainerSpec(**c),  # type: ignore[arg-type]
        health_url="http://127.0.0.1:8000/health",
        base_url="http://127.0.0.1:8000",
        served_model_name="m",
        deadlines=Deadlines(stop_grace_s=7),
    )


def test_parse_proc_limits() -> None:
    limits = parse_proc_limits(PROC_LIMITS)
    assert limits["memlock"] == (8388608, 8388608)
    assert limits["nofile"] == (20000, 20000)
    assert limits["stack"] == (8388608, -1)
    assert limits["rttime"] == (-1, -1)


def test_create_kwargs_follow_the_plan() -> None:
    kw = create_kwargs(make_spec(), caller_env={"HF_TOKEN": "t", "OTHER": "x"})
    assert kw["privileged"] is False
    assert kw["init"] is True
    assert kw["ipc_mode"] == "host"
    assert kw["network_mode"] == "host"
    assert "shm_size" not in kw
    assert "ports" not in kw
    assert kw["cap_add"] == ["SYS_PTRACE"]
    assert kw["entrypoint"] == ["python3"]
    assert kw["command"][:2] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert kw["volumes"] == {"/m": {"bind": "/m", "mode": "ro"}}
    assert kw["environment"] == {"CUDA_LAUNCH_BLOCKING": "1", "HF_TOKEN": "t"}
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in kw["ulimits"]}
    assert ulimits == {"memlock": (-1, -1), "stack": (67108864, 67108864)}
    assert kw["labels"]["harness.run_id"] == "r1"
    assert kw["labels"][LABEL_STOP_GRACE] == "7.0"
    assert kw["labels"][LABEL_OWNER_PID].isdigit()
    assert kw["device_requests"] is None


@pytest.mark.parametrize(
    ("gpus", "count", "ids"),
    [("all", -1, None), (2, 2, None), ([0, 3], None, ["0", "3"])],
)
def test_gpus_become_device_requests(
    gpus: object, count: int | None, ids: list[str] | None
) -> None:
    (request,) = create_kwargs(make_spec(gpus=gpus), caller_env={})["device_requests"]
    assert request["Capabilities"] == [["gpu"]]
    if count is not None:
        assert request["Count"] == count
    else:
        assert request["DeviceIDs"] == ids


def test_private_ipc_and_bridge_kwargs() -> None:
    spec = make_spec(
        ipc_mode="private",
        shm_size="16g",
        network_mode="bridge",
        ports={"8000/tcp": ("127.0.0.1", 8000)},
    )
    kw = create_kwargs(spec, caller_env={})
    assert kw["shm_size"] == "16g"
    assert kw["ports"] == {"8000/tcp": ("127.0.0.1", 8000)}


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


def test_unreachable_docker_is_an_environment_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(DockerProblem) as info:
        docker_client(timeout_s=2)
    assert "cannot reach the Docker engine at unix:///nonexistent/docker.sock" in info.value.message
    assert "dockerd" in (info.value.hint or "")


def test_down_needs_a_run_or_all() -> None:
    with pytest.raises(BadInput, match="--all"):
        docker_down()


# --- handing the log stream over (serve --detach) --------------------------------------------


def test_split_timestamp_strips_dockers_prefix_to_nanoseconds() -> None:
    ts, message = split_timestamp(b"2024-05-01T10:00:02.000000123Z tick 7\n")
    assert message == b"tick 7\n"
    assert ts == 1714557602 * 1_000_000_000 + 123
    assert split_timestamp(b"2024-05-01T12:00:02.5+02:00 x")[0] == 1714557602_500_000_000
    # A partial message (no newline) keeps its bytes; no prefix: unchanged, no time.
    assert split_timestamp(b"2024-05-01T10:00:02.000000000Z abc") == (1714557602 * 10**9, b"abc")
    assert split_timestamp(b"no timestamp here\n") == (None, b"no timestamp here\n")


def resumed(stream: list[int], copied: int) -> list[int]:
    """What a second follower writes after the first copied ``stream[:copied]``: Docker's
    answer to ``since`` (whole seconds) is filtered by the resume point."""
    cursor = LogCursor()
    for ts in stream[:copied]:
        cursor.add(ts)
    since_s, skip = cursor.resume_point()
    answer = [ts for ts in stream if ts >= since_s * 1_000_000_000]
    keep = ResumeFilter(since_s, skip)
    return [ts for ts in answer if keep.keep(ts)]


S = 1_000_000_000


@pytest.mark.parametrize("copied", [0, 1, 3, 5, 6, 8, 9])
def test_resume_point_neither_repeats_nor_loses(copied: int) -> None:
    # Same-nanosecond stamps and stdout/stderr stored slightly out of time order.
    stream = [10 * S, 10 * S + 5, 11 * S + 1, 11 * S + 1, 10 * S + 999_999_999, 12 * S,
              12 * S - 1, 12 * S + 7, 13 * S]  # fmt: skip
    assert resumed(stream, copied) == stream[copied:]


def test_log_cursor_keeps_only_the_last_two_seconds() -> None:
    cursor = LogCursor()
    for i in range(1000):
        cursor.add(i * S // 10)  # ten messages a second for 100 s
    assert len(cursor._recent) <= 21
    assert cursor.resume_point() == (98, 20)
    assert LogCursor().resume_point() == (0, 0)

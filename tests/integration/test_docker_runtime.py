"""The Docker runtime against the real Docker engine (a small HTTP server stands in for the
engine here; tests/integration/test_docker_vllm.py runs vLLM itself).

Every container is removed at teardown by its label, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from harness.containerplan import LABEL_RUN_ID, container_spec, engine_bind_host
from harness.errors import DockerProblem
from harness.profiles import ContainerOptions
from harness.rundir import RunDir
from harness.runtime.docker import DockerHandle, DockerRuntime, container_pids
from harness.runtime.docker_runs import docker_down, docker_ps
from harness.spec import LaunchSpec
from harness.watchdog.capture import dump_stack
from tests.conftest import REPO, free_port, require
from tests.integration.dockerutil import labelled
from tests.integration.harnesscli import finish, first_line, run, spawn, wait_for
from tests.integration.servers import wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.docker]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}\n')
    return d


def http_spec(
    run_id: str,
    runs_dir: Path,
    model_dir: Path,
    options: ContainerOptions,
    image: str,
    env: dict[str, str] | None = None,
) -> LaunchSpec:
    """A docker plan whose 'engine' is python's http.server serving the model directory."""
    port = free_port()
    run_dir = str(runs_dir / run_id)
    c = container_spec(
        engine="vllm",
        device="cpu",
        model=str(model_dir),
        model_is_local_dir=True,
        tp=2,
        run_id=run_id,
        run_dir=run_dir,
        host="127.0.0.1",
        port=port,
        options=options,
        image=image,
        gpus=None,
    )
    bind = engine_bind_host(c.network_mode, "127.0.0.1")
    argv = ["python3", "-u", "-m", "http.server", str(port), "--bind", bind,
            "--directory", str(model_dir)]  # fmt: skip
    return LaunchSpec(
        run_id=run_id,
        run_dir=run_dir,
        engine="vllm",
        model=str(model_dir),
        tp=2,
        profiles=["default", "debug"],
        runtime="docker",
        host="127.0.0.1",
        port=port,
        argv=argv,
        env=env or {},
        container=c,
        health_url=f"http://127.0.0.1:{port}/config.json",
        base_url=f"http://127.0.0.1:{port}",
        served_model_name="model",
        device="cpu",
    )


def start(spec: LaunchSpec) -> DockerHandle:
    handle = DockerRuntime().start(spec, RunDir(Path(spec.run_dir)))
    wait_healthy(
        spec.health_url,
        60,
        alive=lambda: handle.poll() is None,
        log=Path(spec.run_dir) / "server.log",
    )
    return handle


def caps(inspect: dict[str, Any]) -> set[str]:
    return {c.removeprefix("CAP_") for c in inspect["HostConfig"]["CapAdd"] or []}


def test_container_has_the_planned_settings(
    docker_client: Any,
    docker_image: str,
    new_run_id: Callable[[str], str],
    runs_dir: Path,
    model_dir: Path,
) -> None:
    run_id = new_run_id("settings")
    options = ContainerOptions(
        ipc_mode="host",
        network_mode="host",
        cap_add=["SYS_PTRACE"],
        ulimits={"core": -1, "stack": 67108864},
    )
    spec = http_spec(
        run_id, runs_dir, model_dir, options, docker_image,
        env={"CUDA_LAUNCH_BLOCKING": "1", "NCCL_DEBUG_FILE": f"{runs_dir / run_id}/nccl.%h.%p.log"},
    )  # fmt: skip
    handle = start(spec)
    inspect = docker_client.api.inspect_container(handle.id)
    host = inspect["HostConfig"]
    assert host["IpcMode"] == "host"
    assert host["NetworkMode"] == "host"
    assert caps(inspect) == {"SYS_PTRACE"}
    assert host["Privileged"] is False
    assert host["Init"] is True
    assert {(u["Name"], u["Soft"], u["Hard"]) for u in host["Ulimits"]} == {
        ("core", -1, -1),
        ("stack", 67108864, 67108864),
    }
    assert "CUDA_LAUNCH_BLOCKING=1" in inspect["Config"]["Env"]
    labels = inspect["Config"]["Labels"]
    assert labels[LABEL_RUN_ID] == run_id
    assert (labels["harness.engine"], labels["harness.tp"]) == ("vllm", "2")
    mounts = {m["Destination"]: m for m in inspect["Mounts"]}
    assert mounts[str(model_dir)]["Source"] == str(model_dir)
    assert mounts[str(model_dir)]["RW"] is False
    assert mounts[spec.run_dir]["RW"] is True
    assert mounts["/root/.cache/vllm"]["Type"] == "volume"

    # The model mount really is read-only; the run directory really is the host's.
    denied = handle.container.exec_run(["touch", f"{model_dir}/x"])
    assert denied.exit_code != 0
    wrote = handle.container.exec_run(["sh", "-c", f"echo from-container > {spec.run_dir}/probe"])
    assert wrote.exit_code == 0
    assert (Path(spec.run_dir) / "probe").read_text() == "from-container\n"

    # Host pids: the engine's main process is visible (and dumpable) from the host.
    root = handle.root_pid()
    assert root is not None and handle.pids()[0] == root
    proc = psutil.Process(root)
    assert "http.server" in proc.cmdline()
    assert proc.rlimit(psutil.RLIMIT_CORE) == (psutil.RLIM_INFINITY, psutil.RLIM_INFINITY)
    assert handle.container_pid() not in handle.pids()  # the init process is not the server
    assert handle.name in handle.describe()
    assert set(container_pids(handle.name)) == {handle.container_pid(), *handle.pids()}
    attached = DockerRuntime().attach(spec, RunDir(Path(spec.run_dir)))
    assert (attached.id, attached.root_pid(), attached.poll()) == (handle.id, root, None)

    # Output streams into server.log.
    httpx.get(f"{spec.base_url}/config.json", timeout=5)
    log = Path(spec.run_dir) / "server.log"
    wait_for(lambda: "GET /config.json" in log.read_text(), 10, "the request's log line")
    assert "Serving HTTP" in log.read_text()

    assert handle.poll() is None
    code = handle.stop(grace_s=5)
    assert code is not None
    assert handle.stop() == code  # twice is fine
    assert handle.poll() == code
    assert labelled(docker_client, run_id) == []


def test_private_ipc_with_shm_and_bridge_published_on_loopback(
    docker_client: Any,
    docker_image: str,
    new_run_id: Callable[[str], str],
    runs_dir: Path,
    model_dir: Path,
) -> None:
    run_id = new_run_id("bridge")
    options = ContainerOptions(ipc_mode="private", shm_size="1g", network_mode="bridge")
    spec = http_spec(run_id, runs_dir, model_dir, options, docker_image)
    handle = start(spec)
    inspect = docker_client.api.inspect_container(handle.id)
    host = inspect["HostConfig"]
    assert host["IpcMode"] == "private"
    assert host["ShmSize"] == 1024**3
    assert host["NetworkMode"] == "bridge"
    assert host["PortBindings"] == {
        f"{spec.port}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(spec.port)}]
    }
    assert caps(inspect) == set()
    shm = handle.container.exec_run(["df", "-B1", "--output=size", "/dev/shm"])
    assert shm.output.decode().split()[-1] == str(1024**3)
    handle.stop(grace_s=2)
    assert labelled(docker_client, run_id) == []


def test_a_capture_inside_the_container_goes_through_the_handles_exec(
    docker_client: Any,
    docker_image: str,
    new_run_id: Callable[[str], str],
    runs_dir: Path,
    model_dir: Path,
) -> None:
    run_id = new_run_id("exec")
    options = ContainerOptions(cap_add=["SYS_PTRACE"])
    handle = start(http_spec(run_id, runs_dir, model_dir, options, docker_image))
    root = handle.root_pid()
    assert root is not None
    # The capture's own py-spy step, with no py-spy on the host: it runs py-spy inside the
    # container through the handle (the monitor passes handle.exec_in_container).
    dump = dump_stack(
        root,
        py_spy="/nonexistent/py-spy",
        state="S",
        timeout=60,
        container_exec=handle.exec_in_container,
    )
    assert dump.ok and dump.how == "in container", dump.error
    assert "serve_forever" in dump.text  # http.server's main loop, seen from inside

    code, out = handle.exec_in_container(["cat", "/proc/1/status"], 10)
    assert code == 0 and "\nPid:\t1\n" in out
    assert handle.exec_in_container(["sh", "-c", "echo to-stderr >&2; exit 3"], 10) == (
        3,
        "to-stderr\n",
    )
    code, out = handle.exec_in_container(["/no/such/command"], 10)
    assert code != 0 and out

    # Past its deadline: what it printed is kept, and the command is killed, not left behind.
    code, out = handle.exec_in_container(["sh", "-c", "echo partial; exec sleep 600"], 2)
    assert code == -1 and out.startswith("partial\n") and "no answer within 2 s" in out

    def sleepers() -> list[int]:
        found = []
        for pid in container_pids(handle.name):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).cmdline()[:1] == ["sleep"]:
                    found.append(pid)
        return found

    wait_for(lambda: sleepers() == [], 10, "the command past its deadline to be killed")
    handle.stop(grace_s=2)
    assert labelled(docker_client, run_id) == []


@pytest.mark.parametrize(
    ("ulimits", "setting"),
    [({"memlock": -1}, "memlock=unlimited"), ({"nofile": 30000}, "nofile=30000")],
)
def test_refused_ulimit_is_one_line_and_leaves_no_container(
    docker_client: Any,
    docker_image: str,
    new_run_id: Callable[[str], str],
    runs_dir: Path,
    model_dir: Path,
    ulimits: dict[str, int],
    setting: str,
) -> None:
    name = next(iter(ulimits))
    limit = psutil.Process().rlimit(getattr(psutil, f"RLIMIT_{name.upper()}"))[1]
    value = ulimits[name]
    require(
        limit != psutil.RLIM_INFINITY and (value == -1 or value > limit),
        f"a host that refuses ulimit {setting} (hard limit here: {limit})",
    )
    run_id = new_run_id("ulimit")
    spec = http_spec(run_id, runs_dir, model_dir, ContainerOptions(ulimits=ulimits), docker_image)
    with pytest.raises(DockerProblem) as info:
        DockerRuntime().start(spec, RunDir(Path(spec.run_dir)))
    message = info.value.message
    assert "\n" not in message
    assert f"Docker refused ulimit {setting}" in message
    assert "hard limit" in message
    assert f"container.ulimits.{name}" in (info.value.hint or "")
    assert labelled(docker_client, run_id) == []


def test_refused_ulimit_through_the_cli(
    docker_client: Any, docker_image: str, new_run_id: Callable[[str], str], tmp_path: Path
) -> None:
    require(
        psutil.Process().rlimit(psutil.RLIMIT_MEMLOCK)[1] != psutil.RLIM_INFINITY,
        "a host that refuses ulimit memlock=-1",
    )
    profile = tmp_path / "memlock.yaml"
    profile.write_text("container:\n  ulimits:\n    memlock: -1\n")
    runs = tmp_path / "runs"
    before = {
        c.id for c in docker_client.containers.list(all=True, filters={"label": LABEL_RUN_ID})
    }
    result = run(
        runs, "serve", "--engine", "sim", "--model", "sim-model", "--runtime", "docker",
        "--image", docker_image, "--profile", str(profile), "--port", str(free_port()),
        "--startup-timeout", "60", timeout=120, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert lines[0].startswith("error: Docker refused ulimit memlock=unlimited")
    assert "Traceback" not in result.stderr
    after = {c.id for c in docker_client.containers.list(all=True, filters={"label": LABEL_RUN_ID})}
    assert after <= before  # nothing left behind


ORPHAN_MAKER = textwrap.dedent(
    """
    import pathlib, sys, time
    from harness.rundir import RunDir
    from harness.runtime.docker import DockerRuntime
    from harness.spec import LaunchSpec
    spec = LaunchSpec.from_json(pathlib.Path(sys.argv[1]).read_text())
    DockerRuntime().start(spec, RunDir(pathlib.Path(spec.run_dir)))
    print("started", flush=True)
    time.sleep(600)
    """
)


def test_orphan_of_a_killed_harness_is_found_and_removed(
    docker_client: Any,
    docker_image: str,
    new_run_id: Callable[[str], str],
    runs_dir: Path,
    model_dir: Path,
) -> None:
    run_id = new_run_id("orphan")
    spec = http_spec(run_id, runs_dir, model_dir, ContainerOptions(), docker_image)
    spec_file = runs_dir / "spec.json"
    spec_file.write_text(spec.to_json())
    owner = spawn([sys.executable, "-c", ORPHAN_MAKER, str(spec_file)], cwd=REPO, stderr=None)
    assert first_line(owner) == "started"
    wait_healthy(spec.health_url, 60)
    rows = [r for r in docker_ps() if r["run_id"] == run_id]
    assert len(rows) == 1 and rows[0]["orphan"] is False
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(timeout=10)
    (row,) = [r for r in docker_ps() if r["run_id"] == run_id]
    assert row["status"] == "running"
    assert row["orphan"] is True
    assert row["name"] == spec.container.name if spec.container else False
    assert (row["engine"], row["tp"], row["image"]) == ("vllm", 2, docker_image)

    result = run(runs_dir, "down", run_id, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert labelled(docker_client, run_id) == []
    # Its output, no longer followed by anyone, was saved before the container went.
    assert "Serving HTTP" in (Path(spec.run_dir) / "container.log").read_text()


def test_down_all_leaves_no_labelled_container(
    docker_client: Any,
    docker_image: str,
    new_run_id: Callable[[str], str],
    runs_dir: Path,
    model_dir: Path,
) -> None:
    foreign = [
        c.name for c in docker_client.containers.list(all=True, filters={"label": LABEL_RUN_ID})
    ]
    require(not foreign, f"no other harness containers on this engine (found {foreign})")
    names = []
    for kind in ("a", "b"):
        spec = http_spec(new_run_id(kind), runs_dir, model_dir, ContainerOptions(), docker_image)
        # Not waited for or stopped by the test: `down --all` must handle it.
        DockerRuntime(follow_logs=False).start(spec, RunDir(Path(spec.run_dir)))
        names.append(spec.container.name if spec.container else "")
    result = run(runs_dir, "down", "--all", timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert docker_client.containers.list(all=True, filters={"label": LABEL_RUN_ID}) == []
    assert docker_down(all_runs=True) == []


# Its last words on SIGTERM have no newline: Docker's follow mode never delivers such a message
# (vLLM's last line at exit is one), the followers read it from the stored log.
COUNTER = textwrap.dedent(
    """
    import itertools, os, signal, sys, time
    def last_words(*_):
        sys.stdout.write("last words, no newline")
        sys.stdout.flush()
        os._exit(0)
    signal.signal(signal.SIGTERM, last_words)
    for i in itertools.count():
        print(f"tick {i}", flush=True)
        if i % 5 == 0:
            print(f"err {i}", file=sys.stderr, flush=True)
        time.sleep(0.2)
    """
)

DETACHER = textwrap.dedent(
    """
    import os, pathlib, sys, time
    from harness.campaign.server import hand_over
    from harness.rundir import RunDir
    from harness.runtime.docker import DockerRuntime
    from harness.spec import LaunchSpec
    spec = LaunchSpec.from_json(pathlib.Path(sys.argv[1]).read_text())
    run = RunDir(pathlib.Path(spec.run_dir))
    handle = DockerRuntime().start(spec, run)
    deadline = time.monotonic() + 60
    while "tick 7" not in run.server_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    print(hand_over(handle), flush=True)
    os._exit(0)  # like serve --detach: the in-process follower dies with harness
    """
)


def counter_spec(run_id: str, runs_dir: Path, model_dir: Path, image: str) -> LaunchSpec:
    """A container that prints :data:`COUNTER`'s ticks instead of serving."""
    spec = http_spec(run_id, runs_dir, model_dir, ContainerOptions(), image)
    return spec.model_copy(update={"argv": ["python3", "-u", "-c", COUNTER]})


def counter_values(text: str, word: str) -> list[int]:
    return [int(line.split()[1]) for line in text.splitlines() if line.startswith(word + " ")]


def wait_for_tick(log: Path, at_least: int, deadline_s: float = 60) -> list[int]:
    def reached() -> list[int] | None:
        ticks = counter_values(log.read_text(), "tick")
        return ticks if ticks and ticks[-1] >= at_least else None

    ticks: list[int] = wait_for(reached, deadline_s, f"tick {at_least} in server.log")
    return ticks


def test_server_log_ends_with_the_containers_last_message(
    docker_client: Any,
    docker_image: str,
    new_run_id: Callable[[str], str],
    runs_dir: Path,
    model_dir: Path,
) -> None:
    """The in-process follower: after the stop, server.log is the container's whole output."""
    run_id = new_run_id("lastwords")
    spec = counter_spec(run_id, runs_dir, model_dir, docker_image)
    run = RunDir(Path(spec.run_dir))
    handle = DockerRuntime().start(spec, run)
    try:
        wait_for_tick(run.server_log, 3)
        handle.stop(grace_s=5)
    finally:
        handle.stop(grace_s=0)
    text = run.server_log.read_text()
    assert text.endswith("last words, no newline"), text[-200:]
    assert counter_values(text, "tick") == list(range(counter_values(text, "tick")[-1] + 1))
    assert labelled(docker_client, run_id) == []


def test_detached_server_log_keeps_growing_without_repeats_or_gaps(
    docker_client: Any,
    docker_image: str,
    new_run_id: Callable[[str], str],
    runs_dir: Path,
    model_dir: Path,
) -> None:
    run_id = new_run_id("detach")
    spec = counter_spec(run_id, runs_dir, model_dir, docker_image)
    spec_file = runs_dir / "spec.json"
    spec_file.write_text(spec.to_json())
    log = Path(spec.run_dir) / "server.log"
    follower: psutil.Process | None = None
    try:
        owner = finish(spawn([sys.executable, "-c", DETACHER, str(spec_file)], cwd=REPO), 120)
        assert owner.returncode == 0, owner.stderr
        pid = int(owner.stdout.strip())
        follower = psutil.Process(pid)
        assert "harness.runtime.docker_logs" in follower.cmdline()
        state = json.loads((Path(spec.run_dir) / "state.json").read_text())
        assert state["log_follower_pid"] == pid
        at_handover = counter_values(log.read_text(), "tick")[-1]

        # The starting process is gone; server.log goes on growing, every value exactly once.
        ticks = wait_for_tick(log, at_handover + 15)
        assert ticks == list(range(ticks[-1] + 1)), ticks
        assert ticks[-1] >= at_handover + 15
        later = wait_for_tick(log, ticks[-1] + 5)
        assert later[-1] >= ticks[-1] + 5
        errs = counter_values(log.read_text(), "err")
        assert sorted(errs) == list(range(0, errs[-1] + 1, 5)), errs

        assert docker_down(run_id) == [spec.container.name if spec.container else ""]
        # The follower wrote the last lines and ended; server.log is the container's whole
        # output, exactly as `down` saved it.
        assert not follower.is_running() or follower.status() == psutil.STATUS_ZOMBIE
        container_log = (Path(spec.run_dir) / "container.log").read_text()
        assert log.read_text() == container_log
        assert container_log.endswith("last words, no newline")
        assert counter_values(container_log, "tick")[-1] >= later[-1]
    finally:
        if follower is not None and follower.is_running():
            follower.kill()
    assert labelled(docker_client, run_id) == []

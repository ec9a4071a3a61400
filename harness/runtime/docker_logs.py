"""A container's output copied into ``server.log``: the follower thread of the harness process
that started the container, the background follower that takes over from it, and the cursor
that lets the second go on exactly where the first stopped.

``python -m harness.runtime.docker_logs`` is the background follower of a detached container
run (started by :meth:`harness.runtime.docker.DockerHandle.detach`): it appends the container's
output to ``<run dir>/server.log`` from the resume point and exits when the container stops or
is removed. It reaches Docker through :mod:`harness.runtime.docker` (the only module
importing the Docker SDK).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

import psutil

from harness import procgroup
from harness.errors import DockerProblem
from harness.rundir import RunDir


class LogStream(Protocol):
    """A Docker log stream (``container.logs(stream=True, ...)``)."""

    def __iter__(self) -> Iterator[bytes]: ...
    def close(self) -> None: ...


_NS = 1_000_000_000
# Docker's RFC3339NanoFixed prefix of each message when asked for timestamps (UTC "Z" in
# practice; an offset is accepted too).
_TIMESTAMP = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ")
_SECONDS_CACHE: dict[bytes, int] = {}


def split_timestamp(message: bytes) -> tuple[int | None, bytes]:
    """One message of a log stream read with ``timestamps=True`` -> (nanoseconds since the
    epoch, the message as the container wrote it). ``None`` when it carries no timestamp."""
    match = _TIMESTAMP.match(message)
    if match is None:
        return None, message
    key = match.group(1) + match.group(3)
    seconds = _SECONDS_CACHE.get(key)
    if seconds is None:
        seconds = int(datetime.fromisoformat(key.decode()).timestamp())
        if len(_SECONDS_CACHE) > 4096:
            _SECONDS_CACHE.clear()
        _SECONDS_CACHE[key] = seconds
    fraction = (match.group(2) or b"").ljust(9, b"0")
    return seconds * _NS + int(fraction), message[match.end() :]


class LogCursor:
    """How far a copy of a container's log stream got, so another process can go on from there
    without repeating or losing a message.

    The resume point is ``(since_s, skip)``: ask Docker for the messages since the whole second
    ``since_s`` and drop those older than it plus the first ``skip`` of the rest. That is exact
    whatever the daemon's ``since`` granularity: the messages already copied are a prefix of
    the stream in Docker's order, so those at or after ``since_s`` come first in the answer.
    ``since_s`` is one second before the newest copied message because stdout and stderr
    messages are stamped by two goroutines and may be stored slightly out of time order."""

    def __init__(self) -> None:
        self._recent: deque[int] = deque()
        self._newest: int | None = None

    def add(self, ts_ns: int | None) -> None:
        """Count one message as copied (``ts_ns`` from :func:`split_timestamp`)."""
        if ts_ns is None:
            return
        if self._newest is None or ts_ns > self._newest:
            self._newest = ts_ns
        floor = self._since_ns()
        self._recent.append(ts_ns)
        # Only messages at or after the (only growing) resume second are ever counted.
        while self._recent and self._recent[0] < floor:
            self._recent.popleft()

    def _since_ns(self) -> int:
        return 0 if self._newest is None else max(0, self._newest // _NS - 1) * _NS

    def resume_point(self) -> tuple[int, int]:
        """``(since_s, skip)``; ``(0, 0)`` (from the start) when nothing was copied."""
        if self._newest is None:
            return 0, 0
        floor = self._since_ns()
        return floor // _NS, sum(1 for ts in self._recent if ts >= floor)


class ResumeFilter:
    """Which messages of a stream asked ``since=since_s`` were not copied yet (see
    :class:`LogCursor`)."""

    def __init__(self, since_s: int, skip: int) -> None:
        self._since_ns = since_s * _NS
        self._skip = skip

    def keep(self, ts_ns: int | None) -> bool:
        if ts_ns is None:
            return True
        if ts_ns < self._since_ns:
            return False
        if self._skip > 0:
            self._skip -= 1
            return False
        return True


def copy_rest(
    open_rest: Callable[[int], LogStream],
    cursor: LogCursor,
    write: Callable[[bytes], object],
) -> None:
    """After a followed stream ended by itself (the container stopped), copy what the stored
    log holds beyond ``cursor``: Docker's follow mode ends without the container's last message
    when that message has no newline (measured with Docker 28.2: ``printf tail`` at exit is in
    ``docker logs`` and ``docker logs --timestamps``, not in ``docker logs -f``; vLLM's last
    line at exit is such a message). ``open_rest(since_s)`` opens the stored log with
    timestamps, not following. Best effort: a container already removed has nothing to give."""
    since_s, skip = cursor.resume_point()
    keep = ResumeFilter(since_s, skip)
    with contextlib.suppress(Exception):
        for chunk in open_rest(since_s):
            ts, message = split_timestamp(chunk)
            if keep.keep(ts):
                write(message)
                cursor.add(ts)


def _one_line(exc: BaseException) -> str:
    return re.sub(r"\s+", " ", str(exc)).strip()


class LogFollower:
    """Copies a container's output into ``server.log`` as it comes (a daemon thread).

    :meth:`stop` closes the stream so the thread ends even while the container is silent, and
    waits at most its deadline; after it nothing more is written, and :meth:`resume_point`
    says where another follower (:func:`spawn_log_follower`) has to go on. ``open_stream``
    opens the container's stream with timestamps (the runtime's ``container.logs``);
    ``explain`` words an error that ended it (the runtime passes the Docker API's
    explanation)."""

    def __init__(
        self,
        name: str,
        open_stream: Callable[[], LogStream],
        path: Path,
        explain: Callable[[BaseException], str] = _one_line,
        open_rest: Callable[[int], LogStream] | None = None,
    ) -> None:
        self._open_stream = open_stream
        self._open_rest = open_rest
        self._path = path
        self._explain = explain
        self._stream: LogStream | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._cursor = LogCursor()
        self._thread = threading.Thread(target=self._run, name=f"docker-logs-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        with open(self._path, "ab", buffering=0) as out:
            try:
                stream = self._open_stream()
                with self._lock:
                    if self._stopping:
                        stream.close()
                        return
                    self._stream = stream
                for chunk in stream:
                    ts, message = split_timestamp(chunk)
                    # Under the lock: once stop() returned, the cursor is final.
                    with self._lock:
                        if self._stopping:
                            return
                        out.write(message)
                        self._cursor.add(ts)
                if self._open_rest is not None:
                    with self._lock:
                        if not self._stopping:
                            copy_rest(self._open_rest, self._cursor, out.write)
            except Exception as exc:  # the daemon went away, the container was removed, ...
                with self._lock:
                    if not self._stopping:
                        out.write(f"[harness] log stream ended: {self._explain(exc)}\n".encode())

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop following (idempotent); returns within ``timeout_s``."""
        with self._lock:
            self._stopping = True
            stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        self._thread.join(timeout_s)

    def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (at most ``timeout_s``) for the stream to end by itself: after the container
        exited, its last lines are still on the way."""
        self._thread.join(timeout_s)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def resume_point(self) -> tuple[int, int]:
        """Where the copy stands, as :meth:`LogCursor.resume_point`."""
        with self._lock:
            return self._cursor.resume_point()


def open_log(container: Any, *, follow: bool, since_s: int = 0) -> LogStream:
    """A container's stdout and stderr as Docker stores them, with timestamps, from the whole
    second ``since_s`` (0: from the start); ``follow``: until the container stops."""
    stream: LogStream = container.logs(
        stream=True, follow=follow, stdout=True, stderr=True, timestamps=True,
        since=since_s if since_s > 0 else None,
    )  # fmt: skip
    return stream


def start_follower(
    container: Any, path: Path, explain: Callable[[BaseException], str] = _one_line
) -> LogFollower:
    """A started :class:`LogFollower` of ``container`` (a Docker SDK container) into ``path``."""
    follower = LogFollower(
        str(container.name),
        lambda: open_log(container, follow=True),
        path,
        explain,
        lambda since_s: open_log(container, follow=False, since_s=since_s),
    )
    follower.start()
    return follower


# ---------------------------------------------------------------------------------------------
# The background follower of a detached run


#: The module a background log follower runs (``python -m``); also how it is recognised.
FOLLOWER_MODULE = "harness.runtime.docker_logs"


def spawn_log_follower(run: RunDir, container_name: str, since_s: int, skip: int) -> int:
    """Start the background follower as its own process (own session, no terminal), so
    ``server.log`` keeps growing after harness exits. Returns its pid."""
    argv = [
        sys.executable, "-m", FOLLOWER_MODULE, "--run-dir", str(run.path),
        "--container", container_name, "--since", str(since_s), "--skip", str(skip),
    ]  # fmt: skip
    return procgroup.spawn(argv, stderr=subprocess.DEVNULL).pid


def copy_until_stopped(
    stream: LogStream,
    out: IO[bytes],
    keep: ResumeFilter,
    *,
    running: Callable[[], bool | None],
    explain: Callable[[BaseException], str] = _one_line,
    poll_s: float = 2.0,
    grace_s: float = 5.0,
    on_stuck: Callable[[], None] | None = None,
    open_rest: Callable[[int], LogStream] | None = None,
) -> None:
    """Append the messages ``keep`` keeps to ``out`` until the stream ends, then what the
    stored log holds beyond them (:func:`copy_rest`, with ``open_rest``). A watcher thread
    asks ``running()`` every ``poll_s`` (``None``: cannot tell now, ask again); once the
    container is gone or stopped and the stream has not ended within ``grace_s``, the stream is
    closed, and ``on_stuck`` is called if even that did not end it within another ``grace_s``
    (the follower then exits: nothing is left to copy)."""
    done = threading.Event()
    closed = threading.Event()

    def watch() -> None:
        while not done.wait(poll_s):
            if running() is not False:
                continue
            if done.wait(grace_s):
                return
            closed.set()
            with contextlib.suppress(Exception):
                stream.close()
            if not done.wait(grace_s) and on_stuck is not None:
                on_stuck()
            return

    threading.Thread(target=watch, name="container-watch", daemon=True).start()
    cursor = LogCursor()
    try:
        for chunk in stream:
            ts, message = split_timestamp(chunk)
            cursor.add(ts)  # copied now or by the follower this one took over from
            if keep.keep(ts):
                out.write(message)
        if open_rest is not None and not closed.is_set():
            copy_rest(open_rest, cursor, out.write)
    except Exception as exc:  # the daemon went away, ...
        if not closed.is_set():
            out.write(f"[harness] log stream ended: {explain(exc)}\n".encode())
    finally:
        done.set()


def stop_log_follower(run_dir: Path, timeout_s: float = 5.0) -> bool:
    """End the background log follower of a run (pid ``log_follower_pid`` in state.json) once
    its container is gone: it normally ends by itself after the last lines, so it gets
    ``timeout_s`` for that, then SIGTERM, then SIGKILL. Only a process that is really that
    follower is signalled (a recycled pid is left alone). True when one was running."""
    pid = RunDir(run_dir).read_state().get("log_follower_pid")
    if not isinstance(pid, int):
        return False
    try:
        proc = psutil.Process(pid)
        cmdline = proc.cmdline()
        if proc.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(psutil.Error):
                proc.wait(0)  # our own child (a test, a long-lived caller): reap it
            return False
    except psutil.Error:
        return False
    if FOLLOWER_MODULE not in cmdline or str(run_dir) not in cmdline:
        return False
    try:
        proc.wait(timeout_s)
        return True
    except psutil.TimeoutExpired:
        pass
    except psutil.Error:
        return True
    procgroup.stop_tree(pid, grace_s=2.0, kill_wait_s=2.0)
    with contextlib.suppress(psutil.Error):
        proc.wait(0)  # our own child: reap it (psutil would not otherwise)
    return True


def follow_container_log(
    run_dir: Path,
    container_name: str,
    since_s: int = 0,
    skip: int = 0,
    *,
    poll_s: float = 2.0,
    grace_s: float = 5.0,
) -> int:
    """The background follower: append the container's messages from the resume point
    ``(since_s, skip)`` (see :class:`LogCursor`) to ``server.log`` until the stream ends (the
    container stopped); once the container is gone or stopped the stream is closed within
    ``grace_s`` (:func:`copy_until_stopped`), so the process never outlives its container for
    long. Returns the exit status."""
    # Imported here: harness.runtime.docker imports this module for the follower thread.
    from harness.runtime.docker import ContainerGone, docker_client, explain, sdk_errors

    with open(run_dir / "server.log", "ab", buffering=0) as out:
        try:
            with sdk_errors():
                container = docker_client().containers.get(container_name)
                stream = open_log(container, follow=True, since_s=since_s)
        except DockerProblem as exc:
            out.write(f"[harness] log follower could not start: {exc.message}\n".encode())
            return 1

        def running() -> bool | None:
            try:
                with sdk_errors():
                    container.reload()
            except ContainerGone:
                return False
            except DockerProblem:
                return None  # the daemon is busy; ask again
            return container.status not in {"exited", "dead"}

        copy_until_stopped(
            stream,
            out,
            ResumeFilter(since_s, skip),
            running=running,
            explain=explain,
            poll_s=poll_s,
            grace_s=grace_s,
            # The stream did not give up its read: nothing is left to copy.
            on_stuck=lambda: os._exit(0),
            open_rest=lambda since: open_log(container, follow=False, since_s=since),
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments :func:`spawn_log_follower` passes and follow; the exit status."""
    parser = argparse.ArgumentParser(prog=f"python -m {FOLLOWER_MODULE}")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--container", required=True)
    parser.add_argument("--since", type=int, default=0, help="whole second to resume from")
    parser.add_argument("--skip", type=int, default=0, help="messages from --since on to drop")
    args = parser.parse_args(argv)
    return follow_container_log(args.run_dir, args.container, args.since, args.skip)


if __name__ == "__main__":
    raise SystemExit(main())

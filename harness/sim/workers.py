"""Tensor-parallel worker processes for the simulator (I/O).

With ``--tp N`` the simulator starts N worker processes (``python -m harness.sim.workers
--title sim::Worker_TP<r> ...``; the kernel process name is set to ``sim::Worker_TP<r>`` too).
Every engine step is a ``collective_rpc`` from the engine thread to all workers; each worker runs
``execute_model``, which ends in an ``all_reduce`` that exchanges a message with every peer. So
if one worker stops (``kill -STOP``, or the ``worker-stall`` fault, which spins or sleeps inside
``execute_model``), its peers block in ``all_reduce`` and the engine blocks in
``collective_rpc``: one process stuck, the others waiting, ``/health`` still 200, exactly the
shape of a TP collective hang.

Messages are fixed 16-byte frames (two int64) over socketpairs the parent creates.

Shutdown is quiet: a worker leaves without a traceback when its engine or a peer goes away
(closed or reset socket), ignores Ctrl-C (the engine stops it), and gets SIGTERM from the
kernel if the engine dies without stopping it (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

_FRAME = struct.Struct("<qq")
READY = -1
NO_STALL = -1


_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def _prctl(option: int, arg: int | bytes) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def set_process_name(name: str) -> None:
    """Set the kernel's name for this process (``ps -o comm``, psutil ``name()``), 15 bytes."""
    _prctl(_PR_SET_NAME, name.encode()[:15])


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` exits (Linux), and leave now if it already has."""
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:
        os._exit(0)


def _recv_frame(sock: socket.socket) -> tuple[int, int]:
    buf = b""
    while len(buf) < _FRAME.size:
        part = sock.recv(_FRAME.size - len(buf))
        if not part:
            raise EOFError("peer closed")
        buf += part
    a, b = _FRAME.unpack(buf)
    return int(a), int(b)


def _send_frame(sock: socket.socket, a: int, b: int) -> None:
    sock.sendall(_FRAME.pack(a, b))


# --------------------------------------------------------------------------- worker side


def all_reduce(peers: dict[int, socket.socket], rank: int, value: int) -> int:
    """Sum ``value`` over all ranks: send to every peer, then wait for every peer."""
    for sock in peers.values():
        _send_frame(sock, rank, value)
    total = value
    for peer in sorted(peers):
        _, v = _recv_frame(peers[peer])
        total += v
    return total


def stuck_in_kernel(mode: str) -> None:
    """The injected hang: ``spin`` burns a core like a GPU kernel that never finishes (the
    seeds' "one GPU at 100 %"), ``sleep`` just blocks. Exits if the parent goes away."""
    parent = os.getppid()
    while True:
        if mode == "spin":
            deadline = time.monotonic() + 0.2
            while time.monotonic() < deadline:
                pass
        else:
            time.sleep(0.2)
        if os.getppid() != parent:
            os._exit(1)


def execute_model(
    peers: dict[int, socket.socket], rank: int, step: int, stall: int, mode: str
) -> int:
    """One simulated forward pass of this rank's shard, ending in the TP all-reduce."""
    if stall == rank:
        print(f"sim::Worker_TP{rank}: injected worker-stall at step {step}", flush=True)
        stuck_in_kernel(mode)
    return all_reduce(peers, rank, step)


def worker_main(rank: int, ctrl: socket.socket, peers: dict[int, socket.socket], mode: str) -> None:
    """Wait for a step, run it, acknowledge; until the engine or a peer goes away.

    A closed or reset socket (the engine stopped, a peer was killed mid-step) ends the worker
    quietly: that is shutdown, not an error worth a traceback.
    """
    try:
        _send_frame(ctrl, READY, rank)
        while True:
            step, stall = _recv_frame(ctrl)
            result = execute_model(peers, rank, step, stall, mode)
            _send_frame(ctrl, step, result)
    except (EOFError, OSError):
        return


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="harness.sim.workers")
    p.add_argument("--title", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--ctrl-fd", type=int, required=True)
    p.add_argument("--peer", action="append", default=[], help="RANK:FD")
    p.add_argument("--mode", default="spin")
    p.add_argument("--parent-pid", type=int, default=None, help="the engine (default: parent)")
    args = p.parse_args(argv)
    # Ctrl-C reaches the whole foreground group: the engine stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(args.parent_pid if args.parent_pid is not None else os.getppid())
    set_process_name(args.title)
    ctrl = socket.socket(fileno=args.ctrl_fd)
    peers = {}
    for item in args.peer:
        r, fd = item.split(":")
        peers[int(r)] = socket.socket(fileno=int(fd))
    print(f"{args.title} (pid {os.getpid()}): rank {args.rank} initialized", flush=True)
    worker_main(args.rank, ctrl, peers, args.mode)


# --------------------------------------------------------------------------- engine side


@dataclass
class WorkerGroup:
    """The engine's handle on its TP workers."""

    procs: list[subprocess.Popen[bytes]]
    ctrl: list[socket.socket]
    stopping: bool = False

    @classmethod
    def start(cls, tp: int, python: str, mode: str = "spin") -> WorkerGroup:
        """Start ``tp`` workers wired all-to-all; returns before they report ready."""
        ctrl_pairs = [socket.socketpair() for _ in range(tp)]
        peer_pairs: dict[tuple[int, int], tuple[socket.socket, socket.socket]] = {
            (i, j): socket.socketpair() for i in range(tp) for j in range(i + 1, tp)
        }
        procs = []
        for rank in range(tp):
            fds = [ctrl_pairs[rank][1].fileno()]
            argv = [
                python,
                "-m",
                "harness.sim.workers",
                "--title",
                f"sim::Worker_TP{rank}",
                "--rank",
                str(rank),
                "--ctrl-fd",
                str(fds[0]),
                "--mode",
                mode,
                "--parent-pid",
                str(os.getpid()),
            ]
            for (i, j), (a, b) in peer_pairs.items():
                if rank == i:
                    argv += ["--peer", f"{j}:{a.fileno()}"]
                    fds.append(a.fileno())
                elif rank == j:
                    argv += ["--peer", f"{i}:{b.fileno()}"]
                    fds.append(b.fileno())
            procs.append(subprocess.Popen(argv, pass_fds=fds, stdout=sys.stdout, stderr=sys.stderr))
        for _, child in ctrl_pairs:
            child.close()
        for a, b in peer_pairs.values():
            a.close()
            b.close()
        return cls(procs=procs, ctrl=[parent for parent, _ in ctrl_pairs])

    def wait_for_workers_ready(self) -> None:
        """Block until every worker reported ready (the startup-hang fault never returns)."""
        for sock in self.ctrl:
            kind, _ = _recv_frame(sock)
            if kind != READY:
                raise RuntimeError("worker protocol error")

    def collective_rpc(self, step: int, stall_rank: int = NO_STALL) -> int:
        """Run one step on every worker and wait for all of them (blocks if one hangs).

        Once :meth:`stop` began, a step in flight ends quietly (result 0) instead of raising
        on the sockets it closes.
        """
        result = 0
        try:
            for sock in self.ctrl:
                _send_frame(sock, step, stall_rank)
            for sock in self.ctrl:
                _, result = _recv_frame(sock)
        except (EOFError, OSError):
            if self.stopping:
                return 0
            raise
        return result

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop every worker: close the control sockets, SIGTERM, SIGKILL after ``grace_s``."""
        self.stopping = True
        for sock in self.ctrl:
            with contextlib.suppress(OSError):
                sock.close()
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.terminate()
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.poll() is None:  # stopped (SIGSTOP) or ignoring SIGTERM
                with contextlib.suppress(OSError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)


if __name__ == "__main__":
    main()

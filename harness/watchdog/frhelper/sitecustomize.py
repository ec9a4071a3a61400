"""harness's flight-recorder helper: dump PyTorch's CPU flight recorder when harness asks.

``harness watch --flight-recorder`` puts this directory first on ``PYTHONPATH``, so every
Python process of the job runs this file at start-up (then the ``sitecustomize`` that would
have run otherwise, if any). It costs one idle daemon thread blocked on opening a named pipe,
``<prefix>cpu_<pid>.pipe``, made once the process has initialised ``torch.distributed``. When
harness's capture writes to that pipe, the thread writes the recorder's entries
(``torch._C._distributed_c10d._dump_fr_trace``, PyTorch's own dump format) to
``<dump prefix><rank>``. PyTorch offers this for NCCL process groups itself
(``TORCH_NCCL_DEBUG_INFO_PIPE_FILE``) but not for Gloo, whose recorder has no trigger from
outside the process and no dump on timeout (measured with torch 2.13, see docs/watchdog.md).

The thread runs while the main thread waits in a collective because PyTorch releases the GIL
around the wait. Standard library only; torch is used only if the program imported it.

Environment: ``TORCH_NCCL_DEBUG_INFO_PIPE_FILE`` (pipe prefix) and
``TORCH_NCCL_DEBUG_INFO_TEMP_FILE`` (dump prefix; ``cpu_`` is appended), or
``HARNESS_FR_PIPE_PREFIX`` / ``TORCH_FR_DUMP_TEMP_FILE``. Until the process has a process group
the thread only looks once a second whether it has one yet.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
import time


def _prefixes() -> tuple[str, str] | None:
    pipe = os.environ.get("HARNESS_FR_PIPE_PREFIX")
    if not pipe and os.environ.get("TORCH_NCCL_DEBUG_INFO_PIPE_FILE"):
        pipe = os.environ["TORCH_NCCL_DEBUG_INFO_PIPE_FILE"] + "cpu_"
    dump = os.environ.get("TORCH_FR_DUMP_TEMP_FILE")
    if not dump and os.environ.get("TORCH_NCCL_DEBUG_INFO_TEMP_FILE"):
        dump = os.environ["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"] + "cpu_"
    return (pipe, dump) if pipe and dump else None


def _dump(prefix: str) -> None:
    if not _initialised():
        return
    import torch

    dist = torch.distributed

    # includeCollectives, includeStackTraces, onlyActive: PyTorch's own dump format.
    data = torch._C._distributed_c10d._dump_fr_trace(True, True, False)
    path = f"{prefix}{dist.get_rank()}"
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _initialised() -> bool:
    dist = sys.modules.get("torch.distributed")
    try:  # the module may be half imported by the main thread
        return bool(dist is not None and dist.is_available() and dist.is_initialized())
    except Exception:
        return False


def _serve(pipe: str, prefix: str) -> None:
    # The pipe exists only once this process has a process group, so harness waits for
    # exactly as many dumps as it finds pipes (a launcher such as torchrun never makes one).
    while not _initialised():
        time.sleep(1.0)
    try:
        os.makedirs(os.path.dirname(pipe) or ".", exist_ok=True)
        if os.path.exists(pipe):
            os.unlink(pipe)
        os.mkfifo(pipe, 0o600)
    except OSError:
        return
    while True:
        try:
            with open(pipe, "rb") as fh:  # blocks until harness opens it to write
                fh.read(64)
        except OSError:
            return
        with contextlib.suppress(Exception):  # never disturb the program
            _dump(prefix)


def _start() -> None:
    found = _prefixes()
    if found is None:
        return
    pipe = f"{found[0]}{os.getpid()}.pipe"

    def remove() -> None:
        with contextlib.suppress(OSError):
            os.unlink(pipe)

    atexit.register(remove)
    threading.Thread(
        target=_serve, args=(pipe, found[1]), name="harness-flight-recorder", daemon=True
    ).start()


def _chain() -> None:
    """Run the ``sitecustomize`` this one hides (the next one on the path), if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


with contextlib.suppress(Exception):
    _start()
_chain()

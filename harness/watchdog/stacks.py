"""Reading ``py-spy dump`` output (pure): threads, frames, and where a process waits.

py-spy's JSON (``py-spy dump --json``: a list of threads with ``thread_name``, ``os_thread_id``,
``active``, ``owns_gil`` and ``frames`` of ``name``, ``short_filename``, ``line``) is the
structured form the capture uses (:func:`parse_json_dump`); the text format below is parsed
only where JSON is not available (an older py-spy, py-spy inside a container, remote nodes),
and rendered from the JSON for people (:func:`render_text`). A text dump looks like::

    Process 6621: VLLM::Worker_TP0
    Python v3.11.7 (/usr/bin/python3.11)

    Thread 6621 (idle): "MainThread"
        all_reduce (vllm/distributed/device_communicators/cpu_communicator.py:111)
        ...

Frames are innermost first. ``--native`` adds C/C++ frames such as ``poll (libc.so.6)``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_THREAD = re.compile(
    r'^Thread (?P<tid>0x[0-9a-fA-F]+|\d+) \((?P<status>[^)]*)\)(?:: "(?P<name>.*)")?'
)
_FRAME = re.compile(r"^\s+(?P<func>.+?) \((?P<where>[^()]*)\)\s*$")

# Collective communication calls (torch.distributed, vLLM's communicators, NCCL/gloo wrappers).
COLLECTIVES = frozenset(
    {
        "all_reduce",
        "all_gather",
        "all_gather_into_tensor",
        "all_gather_object",
        "reduce_scatter",
        "reduce_scatter_tensor",
        "all_to_all",
        "all_to_all_single",
        "broadcast",
        "broadcast_object",
        "broadcast_object_list",
        "broadcast_tensor_dict",
        "barrier",
        "monitored_barrier",
        "gather",
        "gather_object",
        "scatter",
        "reduce",
        "send",
        "recv",
        "isend",
        "irecv",
        "batch_isend_irecv",
        "send_object",
        "recv_object",
        "tensor_model_parallel_all_reduce",
        "tensor_model_parallel_all_gather",
    }
)
# Common words (``recv``, ``gather``, ``send``, ...) are a collective only inside communication
# code; the distinctive names (``all_reduce``, ``reduce_scatter``, ...) are one anywhere: a
# training script's or the simulator's own ``all_reduce`` is still the collective it waits in.
_AMBIGUOUS = frozenset(
    {"broadcast", "barrier", "gather", "scatter", "reduce", "send", "recv", "isend", "irecv"}
)
_COMM_PATH = re.compile(r"distributed|c10d|comm|nccl|gloo|parallel|collective", re.IGNORECASE)
# Native (``--native``) frames of a collective: NCCL, gloo, MPI/oneCCL, torch's c10d, vLLM's
# shared-memory and custom all-reduce kernels. Matched on the symbol or the library.
_NATIVE_COMM = re.compile(
    r"nccl|rccl|gloo|mpi|ccl|c10d|distributed|shm_?all|shm_?broadcast|custom_?ar", re.IGNORECASE
)
_NATIVE_COLLECTIVES = (
    ("allreduce", "all_reduce"),
    ("allgather", "all_gather"),
    ("reducescatter", "reduce_scatter"),
    ("alltoall", "all_to_all"),
    ("broadcast", "broadcast"),
    ("barrier", "barrier"),
    # torch's functional collectives (compiled graphs): waiting for a collective's result.
    ("waittensor", "wait_tensor"),
)

# Engine-level waits: the executor waiting for its workers' replies. (A worker's own
# ``execute_model`` is its work, not a wait: where it waits is inside it.)
RPC_WAITS = frozenset({"collective_rpc", "get_response"})
# Most telling first: a worker idles in ``dequeue``, which polls inside.
QUEUE_WAITS = ("dequeue", "acquire_read", "recv_bytes", "get", "wait", "select", "poll")
EVENT_LOOP = frozenset({"run_forever", "run_until_complete"})
# Native frames that never say where a process waits: the C library, the interpreter, the C++
# runtime, CPython's own sources (``timemodule.c:...``), unresolved addresses.
_GENERIC_NATIVE = re.compile(
    r"^(?:lib(?:c|pthread|python[\d.]*|stdc\+\+|gcc_s|m|dl|rt|z|util)(?:[-.][\w.-]*)?\.so[\d.]*"
    r"|ld-linux.*|.*\.(?:c|h|cc|cpp)(?::\d+)?)$"
)


@dataclass(frozen=True)
class Frame:
    func: str
    where: str

    @property
    def is_python(self) -> bool:
        """A Python source frame (``file.py:12``, ``<string>:3``, ``<frozen runpy>:88``)."""
        path = self.where.rsplit(":", 1)[0]
        return path.endswith(".py") or path.startswith("<")

    @property
    def tokens(self) -> list[str]:
        """The dotted parts of the qualified name, without ``<locals>``."""
        return [t for t in self.func.split(".") if t and t != "<locals>"]

    def __str__(self) -> str:
        return f"{self.func} ({self.where})"


@dataclass
class Thread:
    tid: str
    status: str
    name: str
    frames: list[Frame] = field(default_factory=list)
    active: bool | None = None  # py-spy's view: running (not idle), from JSON
    owns_gil: bool | None = None

    @property
    def python_frames(self) -> list[Frame]:
        return [f for f in self.frames if f.is_python]


@dataclass(frozen=True)
class Wait:
    """Where a process waits: ``label`` for the headline, ``frame`` for the details."""

    label: str
    frame: str
    thread: str
    category: str  # collective | rpc | queue | event-loop | other

    def __str__(self) -> str:
        return self.label


def parse_dump(text: str) -> list[Thread]:
    """The threads of one ``py-spy dump`` (empty when the text holds no dump)."""
    threads: list[Thread] = []
    current: Thread | None = None
    for line in text.splitlines():
        m = _THREAD.match(line)
        if m:
            current = Thread(m["tid"], m["status"], m["name"] or "")
            threads.append(current)
            continue
        if current is None:
            continue
        fm = _FRAME.match(line)
        if fm and line.startswith((" ", "\t")):
            current.frames.append(Frame(fm["func"].strip(), fm["where"].strip()))
        elif line.strip() and not line.startswith((" ", "\t")):
            current = None
    return threads


def _status(active: bool, owns_gil: bool) -> str:
    """py-spy's text status of a thread."""
    if active:
        return "active+gil" if owns_gil else "active"
    return "idle+gil" if owns_gil else "idle"


def _frame_from_json(raw: Any) -> Frame | None:
    if not isinstance(raw, dict):
        return None
    name = str(raw.get("name") or "?")
    short = raw.get("short_filename") or raw.get("filename") or "?"
    line = raw.get("line")
    where = f"{short}:{line}" if isinstance(line, int) and line > 0 else str(short)
    return Frame(name, where)


def parse_json_dump(text: str) -> list[Thread]:
    """The threads of one ``py-spy dump --json``, in py-spy's text order (main thread first);
    empty when the text is not such a dump."""
    try:
        raw = json.loads(text)
    except ValueError:
        return []
    if not isinstance(raw, list):
        return []
    threads: list[Thread] = []
    for item in reversed(raw):  # the JSON lists threads in the reverse of the text order
        if not isinstance(item, dict):
            continue
        tid = item.get("os_thread_id")
        if not isinstance(tid, int):
            tid = item.get("thread_id")
            tid = f"0x{tid:X}" if isinstance(tid, int) else "?"
        active, gil = bool(item.get("active")), bool(item.get("owns_gil"))
        frames = [f for f in map(_frame_from_json, item.get("frames") or []) if f is not None]
        threads.append(
            Thread(
                str(tid),
                _status(active, gil),
                str(item.get("thread_name") or ""),
                frames,
                active=active,
                owns_gil=gil,
            )
        )
    return threads


def to_pyspy_json(threads: Sequence[Thread]) -> list[dict[str, Any]]:
    """Threads as py-spy's JSON objects (``thread_name``, ``active``, ``owns_gil``, ``frames``
    of ``name``, ``filename``, ``line``): the one shape of ``stacks/<pid>.json`` when the dump
    came as text (py-spy inside a container, an older py-spy)."""
    out = []
    for t in reversed(threads):  # py-spy's JSON order
        frames = []
        for f in t.frames:
            path, _, line = f.where.rpartition(":")
            if not path or not line.isdigit():
                path, line = f.where, "0"
            frames.append(
                {"name": f.func, "filename": path, "short_filename": path, "line": int(line)}
            )
        active = t.active if t.active is not None else t.status.startswith("active")
        gil = t.owns_gil if t.owns_gil is not None else "gil" in t.status
        tid: Any = int(t.tid) if t.tid.isdigit() else t.tid
        out.append(
            {
                "os_thread_id": tid,
                "thread_name": t.name,
                "active": active,
                "owns_gil": gil,
                "frames": frames,
            }
        )
    return out


def render_text(threads: Sequence[Thread], header: str = "") -> str:
    """Threads in py-spy's text layout (``Thread 42 (idle): "MainThread"`` and indented
    frames), for people reading ``stacks/<pid>.txt``."""
    lines = [header.rstrip("\n"), ""] if header else []
    for t in threads:
        name = f': "{t.name}"' if t.name else ""
        lines.append(f"Thread {t.tid} ({t.status}){name}")
        lines.extend(f"    {f}" for f in t.frames)
    return "\n".join(lines) + "\n"


def collective_name(frame: Frame) -> str | None:
    """The collective a frame is in (``all_reduce``, ...), Python or native, or None."""
    if frame.is_python:
        comm = bool(_COMM_PATH.search(frame.where))
        for tok in reversed(frame.tokens):
            name = _python_collective(tok.lstrip("_"), comm)
            if name is not None:
                return name
        return None
    symbol = frame.func
    if symbol.startswith("0x") or not _NATIVE_COMM.search(f"{symbol} {frame.where}"):
        return None
    # ``c10d::ProcessGroupGloo::allreduce(std::vector<at::Tensor>&, ...)``, ``ncclAllReduce``
    for part in reversed(_short_symbol(symbol).split("::")):
        squashed = re.sub(r"[^a-z]", "", part.lower())
        for key, name in _NATIVE_COLLECTIVES:
            if key in squashed:
                return name
    return None


def _python_collective(token: str, comm: bool) -> str | None:
    """``all_reduce``, ``all_reduce_out_place`` -> ``all_reduce``; common words need ``comm``."""
    if token in COLLECTIVES:
        return token if comm or token not in _AMBIGUOUS else None
    # Variants such as vLLM's ``_all_reduce_out_place``: the longest collective prefix.
    for name in sorted(COLLECTIVES, key=len, reverse=True):
        if token.startswith(name + "_") and (comm or name not in _AMBIGUOUS):
            return name
    return None


def _category(frame: Frame) -> tuple[int, int, str] | None:
    """(category rank, rank inside the category, label) of a frame, or None."""
    collective = collective_name(frame)
    if collective is not None:
        return 0, 0, collective
    if not frame.is_python:
        return None
    tokens = frame.tokens
    if "collective_rpc" in tokens:
        return 1, 0, "collective_rpc"
    for tok in reversed(tokens):
        if tok in RPC_WAITS:
            return 1, 1, tok
    for tok in reversed(tokens):
        if tok in EVENT_LOOP:
            return 3, 0, "the event loop"
    if frame.where.startswith("asyncio/runners.py") or "/asyncio/runners.py" in frame.where:
        return 3, 0, "the event loop"
    for tok in reversed(tokens):
        if tok in QUEUE_WAITS:
            return 2, QUEUE_WAITS.index(tok), tok
    return None


_CATEGORY_NAMES = {0: "collective", 1: "rpc", 2: "queue", 3: "event-loop"}


def is_generic_native(frame: Frame) -> bool:
    """A native frame that says nothing about where a process waits (libc, the interpreter)."""
    return frame.func.startswith("0x") or bool(_GENERIC_NATIVE.match(frame.where))


def thread_wait(thread: Thread) -> Wait | None:
    """Where one thread waits: its most telling frame, Python or native, innermost on ties.

    In order: a collective (``all_reduce``, also in a native frame such as
    ``c10d::ProcessGroupGloo::allreduce`` or ``ncclAllReduce``), the executor waiting for its
    workers (``collective_rpc``), a queue or lock wait (named after its caller when that says
    more), the event loop; otherwise the innermost Python frame outside the standard library,
    with the innermost telling native frame inside it (``forward (cudaStreamSynchronize)``).
    """
    frames = thread.frames
    python = thread.python_frames
    if not python and not any(not is_generic_native(f) for f in frames):
        return None
    best: tuple[int, int, int, str, Frame] | None = None
    for depth, frame in enumerate(frames):
        cat = _category(frame)
        if cat is None:
            continue
        rank, sub, label = cat
        if best is None or (rank, sub) < (best[0], best[1]):
            best = (rank, sub, depth, label, frame)
    who = thread.name or thread.tid
    if best is not None:
        rank, _, depth, label, frame = best
        if rank == 2:
            label = _with_caller(frames, depth, label)
        return Wait(label, str(frame), who, _CATEGORY_NAMES[rank])
    if not python:
        inner = next(f for f in frames if not is_generic_native(f))
        return Wait(inner.func, str(inner), who, "other")
    inner = python[0]
    depth = frames.index(inner)
    label = _with_caller(frames, depth, inner.tokens[-1] if inner.tokens else inner.func)
    native = next((f for f in frames[:depth] if not is_generic_native(f)), None)
    if native is not None:
        label = f"{label} ({_short_symbol(native.func)})"
    return Wait(label, str(inner), who, "other")


def _short_symbol(symbol: str) -> str:
    """``c10d::Work::wait(std::chrono::duration<...>)`` -> ``c10d::Work::wait``."""
    bare = symbol
    for _ in range(20):  # nested templates and argument lists, innermost first
        stripped = re.sub(r"<[^<>]*>|\([^()]*\)", "", bare)
        if stripped == bare:
            break
        bare = stripped
    return bare.strip()[:120] or symbol[:120]


def is_stdlib(frame: Frame) -> bool:
    """A frame in Python's standard library (py-spy prints ``threading.py:327``)."""
    path = frame.where.rsplit(":", 1)[0]
    top = path.split("/", 1)[0].removesuffix(".py")
    return path.startswith("<") or top in sys.stdlib_module_names


def _with_caller(frames: list[Frame], depth: int, label: str) -> str:
    """``Event.wait`` says little: name the first caller outside the standard library."""
    if not is_stdlib(frames[depth]):
        return label
    for frame in frames[depth + 1 :]:
        if frame.is_python and not is_stdlib(frame) and frame.tokens:
            return f"{frame.tokens[-1]} ({label})"
    return label


def main_thread(threads: list[Thread]) -> Thread | None:
    for t in threads:
        if t.name == "MainThread":
            return t
    return threads[0] if threads else None


def process_wait(threads: list[Thread]) -> Wait | None:
    """Where a process waits: its main thread, unless another thread sits in a collective."""
    main = main_thread(threads)
    main_wait = thread_wait(main) if main else None
    if main_wait is not None and main_wait.category == "collective":
        return main_wait
    for t in threads:
        w = thread_wait(t)
        if w is not None and w.category == "collective":
            return w
    return main_wait


#: Threads harness itself adds to a process (the flight-recorder dump helper): answering
#: harness's own request is not the process moving.
HARNESS_THREADS = frozenset({"harness-flight-recorder"})


def signature(threads: list[Thread]) -> tuple[tuple[str, ...], ...]:
    """Comparable shape of a dump: each thread's Python frames (to tell stuck from slow)."""
    return tuple(
        tuple(str(f) for f in t.python_frames)
        for t in sorted(threads, key=lambda t: t.tid)
        if t.name not in HARNESS_THREADS
    )

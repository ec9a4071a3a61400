"""The signature catalogue: every shipped signature matches its fixture (log lines as engines
print them, real py-spy JSON stacks) and not a nearby text; the catalogue loads like a profile
(one line with the line number, exit 2) and a user's file goes first."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.errors import BadInput
from harness.watchdog.matching import (
    Facts,
    ImageSize,
    Match,
    likely_line,
    log_lines,
    match_catalogue,
)
from harness.watchdog.rules import GpuSample
from harness.watchdog.signatures import (
    SHIPPED,
    SignatureError,
    load_catalogue,
    load_file,
    parse_catalogue,
)
from harness.watchdog.stacks import Thread, parse_dump, parse_json_dump, process_wait
from harness.watchdog.summary import NO_SIGNATURE_LINE, ProcessReport, odd_one_out

FIX = Path(__file__).resolve().parents[2] / "fixtures"
SIG = FIX / "signatures"
CATALOGUE = load_catalogue()


def stack(name: str) -> list[Thread]:
    path = SIG / name if (SIG / name).exists() else FIX / "pyspy" / name
    text = path.read_text()
    return parse_json_dump(text) if name.endswith(".json") else parse_dump(text)


def proc(
    role: str, pid: int, threads: Sequence[Thread] = (), state: str = "S", cmd: str = ""
) -> tuple[ProcessReport, list[Thread]]:
    rep = ProcessReport(pid=pid, role=role, state=state, cmdline=cmd or role)
    wait = process_wait(list(threads)) if threads else None
    if wait is not None:
        rep.wait, rep.wait_frame, rep.wait_category = wait.label, wait.frame, wait.category
    return rep, list(threads)


def facts(
    *procs: tuple[ProcessReport, list[Thread]],
    logs: Sequence[str] = (),
    gpus: Sequence[float] = (),
    **more: Any,
) -> Facts:
    reports = [p for p, _ in procs]
    gpu_samples = [GpuSample(i, u) for i, u in enumerate(gpus)]
    lines = []
    for name in logs:
        lines += log_lines(name, (SIG / name).read_text())
    return Facts(
        kind=more.pop("kind", "engine-stall"),
        rule=more.pop("rule", "canary"),
        logs=lines,
        processes=reports,
        stacks={(None, p.pid): t for p, t in procs if t},
        odd=odd_one_out(reports, gpu_samples),
        gpus=gpu_samples,
        **more,
    )


def names(f: Facts) -> list[str]:
    return [m.name for m in match_catalogue(CATALOGUE, f)]


def first(f: Facts) -> Match:
    found = match_catalogue(CATALOGUE, f)
    assert found, "no signature matched"
    return found[0]


def tp_pair(tp0: str, tp1: str, state1: str = "S") -> list[tuple[ProcessReport, list[Thread]]]:
    return [
        proc("EngineCore", 10, stack("vllm_enginecore_collective_rpc.json")),
        proc("Worker_TP0", 11, stack(tp0)),
        proc("Worker_TP1", 12, stack(tp1), state=state1),
    ]


# ------------------------------------------------------------------------ one test per signature


def test_catalogue_has_every_signature_the_issue_names() -> None:
    assert [s.name for s, _ in CATALOGUE.signatures] == [
        "gpu-driver-wedged",
        "nccl-watchdog-timeout",
        "dev-shm-too-small",
        "network-wrong-address",
        "gloo-connect-hang",
        "rpc-timeout-engine-dead",
        "cuda-graph-capture-hang",
        "custom-allreduce-spin",
        "p2p-broken",
        "vlm-oversized-images",
        "lmdeploy-turbomind-idle-gpu",
        "vllm-shm-broadcast-stall",
        "odd-rank-out",
        "collective-never-completes",
        "lost-message-idle-workers",
    ]


def test_gpu_driver_wedged() -> None:
    assert first(facts(nvidia_smi="timeout")).name == "gpu-driver-wedged"
    # nvidia-smi answered (even with an error): the tool works, the driver is not wedged.
    assert "gpu-driver-wedged" not in names(facts(nvidia_smi="error"))


def test_nccl_watchdog_timeout() -> None:
    m = first(facts(logs=["nccl_watchdog_timeout.log"]))
    assert m.name == "nccl-watchdog-timeout"
    assert m.evidence[0].startswith("nccl_watchdog_timeout.log:1: [rank1]")
    assert "SeqNum=668" in m.evidence[0]
    # The watchdog thread itself stuck (a CUDA call hang) is another story.
    assert "nccl-watchdog-timeout" not in names(facts(logs=["nccl_watchdog_stuck.log"]))


def test_dev_shm_too_small() -> None:
    m = first(facts(logs=["nccl_shm_create.log"]))
    assert m.name == "dev-shm-too-small" and "--ipc=host" in m.next_step
    assert len(m.evidence) == 2  # "failed to extend" and "Error while creating"
    # Attaching to a segment another rank removed is not a full /dev/shm.
    assert names(facts(logs=["nccl_shm_attach.log"])) == []


def test_network_wrong_address_from_real_gloo_and_tcpstore_errors() -> None:
    for log in ("gloo_no_iface.log", "tcpstore_timeout.log"):
        m = first(facts(logs=[log]))
        assert m.name == "network-wrong-address", log
        assert "--profile net" in m.next_step and "GLOO_SOCKET_IFNAME" in m.next_step
    # A healthy NCCL init names ncclCommInitRank too.
    assert names(facts(logs=["nccl_init_ok.log"])) == []
    # NCCL's "unhandled system error" after a /dev/shm failure is the shm signature only.
    assert "network-wrong-address" not in names(facts(logs=["nccl_shm_create.log"]))


def test_network_wrong_address_from_the_multinode_network_check() -> None:
    # network.txt of a real two-node startup hang (node2's Gloo on a second NIC's network).
    m = first(facts(logs=["multinode_network.txt"], kind="startup-hang"))
    assert m.name == "network-wrong-address"
    assert m.evidence[0].startswith("multinode_network.txt:3: node node2: GLOO_SOCKET_IFNAME=eth1")
    # The per-node header lines (settings, not findings) match nothing.
    header = [
        ln for ln in (SIG / "multinode_network.txt").read_text().splitlines() if ln[:1] == "#"
    ]
    lines = log_lines("network.txt", "\n".join(header))
    assert names(Facts(kind="startup-hang", logs=lines)) == []


def test_gloo_connect_hang_from_a_real_worker_stack() -> None:
    # py-spy --json of the real VLLM::Worker of that hang: inside ProcessGroupGloo's
    # constructor, waiting for a pair to connect.
    worker = proc("Worker", 71, stack("gloo_connect_worker.json"))
    m = first(facts(worker, kind="startup-hang", rule="health-deadline"))
    assert m.name == "gloo-connect-hang"
    assert any("waitUntilConnected" in e for e in m.evidence)
    assert "--net-iface HOST=IFACE" in m.next_step
    # The same frames in a running server's dump are not a startup hang.
    assert "gloo-connect-hang" not in names(facts(worker, kind="manual", rule="dump"))


def test_rpc_timeout_engine_dead() -> None:
    m = first(facts(logs=["vllm_rpc_timeout.log"]))
    assert m.name == "rpc-timeout-engine-dead"
    assert any("RPC call to sample_tokens timed out" in e for e in m.evidence)
    assert any("EngineDeadError" in e for e in m.evidence)  # `also` evidence
    assert "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS" in m.next_step
    # EngineDeadError after a crash is not an RPC timeout.
    assert names(facts(logs=["vllm_engine_dead_crash.log"])) == []


def test_cuda_graph_capture_hang() -> None:
    f = facts(logs=["vllm_cudagraph_capture.log"], kind="startup-hang", rule="health-deadline")
    m = first(f)
    assert m.name == "cuda-graph-capture-hang" and "--profile eager" in m.next_step
    done = facts(
        logs=["vllm_cudagraph_capture.log", "vllm_cudagraph_done.log"], kind="startup-hang"
    )
    assert "cuda-graph-capture-hang" not in names(done)
    # Not a startup hang: capture finished long ago.
    assert names(facts(logs=["vllm_cudagraph_capture.log"], kind="engine-stall")) == []
    eager = facts(logs=["vllm_cudagraph_capture.log"], kind="startup-hang", profiles=["eager"])
    assert names(eager) == []


def test_custom_allreduce_spin() -> None:
    procs = tp_pair("custom_allreduce_worker.json", "custom_allreduce_worker.json")
    m = first(facts(*procs, gpus=[100, 100]))
    assert m.name == "custom-allreduce-spin"
    assert "--disable-custom-all-reduce" in m.next_step
    assert any(e.startswith("Worker_TP1 (pid 12): CustomAllreduce.") for e in m.evidence)
    # GPUs idle: not the spinning kernel.
    assert "custom-allreduce-spin" not in names(facts(*procs, gpus=[0, 0]))
    # Only one rank inside: not every rank.
    mixed = tp_pair("custom_allreduce_worker.json", "vllm_worker_tp0_all_reduce.json")
    assert "custom-allreduce-spin" not in names(facts(*mixed, gpus=[100, 100]))


def test_p2p_broken() -> None:
    procs = tp_pair("vllm_worker_tp0_all_reduce.json", "vllm_worker_tp0_all_reduce.json")
    m = first(facts(*procs, logs=["nccl_p2p_channels.log"]))
    assert m.name == "p2p-broken" and "nccl-safe" in m.next_step
    assert any("via P2P/IPC" in e for e in m.evidence)
    # P2P already off: still a collective that never completes, not broken P2P.
    off = facts(*procs, logs=["nccl_p2p_channels.log"], envs=[{"NCCL_P2P_DISABLE": "1"}])
    assert names(off) == ["collective-never-completes"]


def test_vlm_oversized_images() -> None:
    big = facts(images=[("7", [ImageSize(4000, 3000)])])
    m = first(big)
    assert m.name == "vlm-oversized-images" and "vlm-safe" in m.next_step
    assert m.evidence == ("request 7: image 4000x3000 (12.0 MP, over 4.0 MP)",)
    assert names(facts(images=[("7", [ImageSize(1000, 1000)])])) == []
    capped = facts(images=[("7", [ImageSize(4000, 3000)])], profiles=["default", "vlm-safe"])
    assert names(capped) == []


def test_lmdeploy_turbomind_idle_gpu() -> None:
    lm = proc(
        "lmdeploy", 30, cmd="lmdeploy serve api_server /models/qwen --tp 4 --backend turbomind"
    )
    m = first(facts(lm, gpus=[100, 98, 0, 100]))
    assert m.name == "lmdeploy-turbomind-idle-gpu" and "TM_DEBUG_LEVEL=DEBUG" in m.next_step
    assert "lmdeploy-turbomind-idle-gpu" not in names(facts(lm, gpus=[100, 98, 97, 100]))
    vllm = proc("APIServer", 31, cmd="vllm serve /models/qwen --tensor-parallel-size 4")
    assert "lmdeploy-turbomind-idle-gpu" not in names(facts(vllm, gpus=[100, 98, 0, 100]))


def test_vllm_shm_broadcast_stall_names_the_stopped_worker() -> None:
    procs = tp_pair("vllm_worker_tp0_all_reduce.json", "vllm_worker_idle.json", state1="T")
    for log in ("vllm_shm_broadcast.log", "vllm_shm_broadcast_v06.log"):
        m = first(facts(*procs, logs=[log]))
        assert m.name == "vllm-shm-broadcast-stall", log
        assert "Worker_TP1 stopped (state T)" in m.cause
        assert m.likely_line().startswith("likely: vllm-shm-broadcast-stall — ")
    # No process stands out: the line says so (a worker may still be compiling).
    m = first(facts(logs=["vllm_shm_broadcast.log"]))
    assert "no process stands out" in m.cause and "--profile eager" in m.next_step
    assert names(facts(logs=["vllm_no_cache_memory.log"])) == []


def test_odd_rank_out() -> None:
    # The real capture: Worker_TP1 stopped inside all_reduce, Worker_TP0 waiting in it.
    procs = tp_pair("vllm_worker_tp0_all_reduce.json", "vllm_worker_tp1_stopped.json", "T")
    m = first(facts(*procs))
    assert m.name == "odd-rank-out"
    # Both "in" the same collective, but one is stopped: not a transport that never completes.
    assert "collective-never-completes" not in names(facts(*procs))
    assert m.cause.startswith("Worker_TP1 stopped (state T) while its peers wait")
    assert m.evidence[0] == "Worker_TP1 stopped (state T)"
    assert m.evidence[1] == "Worker_TP0 (pid 11) waits in all_reduce"
    # Stopped, but its peer is idle too (no collective waiting on it): not this shape.
    idle = tp_pair("vllm_worker_idle.json", "vllm_worker_idle.json", state1="T")
    assert "odd-rank-out" not in names(facts(*idle))


def test_odd_rank_out_from_the_gloo_deadlock() -> None:
    rank0 = proc("rank0", 20, stack("gloo_rank0.txt"))
    rank1 = proc("rank1", 21, stack("gloo_rank1.txt"))
    m = first(facts(rank0, rank1))
    assert m.name == "odd-rank-out" and m.cause.startswith("rank1 is not in the collective")


def test_collective_never_completes() -> None:
    procs = tp_pair("vllm_worker_tp0_all_reduce.json", "vllm_worker_tp0_all_reduce.json")
    m = first(facts(*procs))
    assert m.name == "collective-never-completes"
    assert m.evidence == ("Worker_TP0 (pid 11), Worker_TP1 (pid 12): all wait in all_reduce",)
    # Two different collectives: some rank is elsewhere.
    other = tp_pair("vllm_worker_tp0_all_reduce.json", "vllm_worker_tp0_compiled_wait_tensor.txt")
    assert "collective-never-completes" not in names(facts(*other))


def test_lost_message_idle_workers() -> None:
    procs = tp_pair("vllm_worker_idle.json", "vllm_worker_idle.json")
    m = first(facts(*procs))
    assert m.name == "lost-message-idle-workers"
    assert "EngineCore (pid 10) waits in collective_rpc" in m.evidence
    # A worker in a collective: not idle workers.
    busy = tp_pair("vllm_worker_idle.json", "vllm_worker_tp0_all_reduce.json")
    assert "lost-message-idle-workers" not in names(facts(*busy))


def test_nothing_matches_a_quiet_incident() -> None:
    f = facts(proc("python x.py", 40, stack("vllm_api_server.txt")))
    assert match_catalogue(CATALOGUE, f) == []
    assert likely_line([]) == NO_SIGNATURE_LINE == "no known signature matched"


# ------------------------------------------------------------------------ the file format


def test_shipped_catalogue_is_valid_and_documented() -> None:
    sigs = load_file(SHIPPED)
    assert all(s.cause and s.next_step for s in sigs)


def write(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


MINE = """\
version: 1
signatures:
  - name: my-oom
    cause: the loader ran out of memory ({odd})
    next_step: use smaller batches
    match:
      all:
        - log: 'MemoryError'
  - name: odd-rank-out
    cause: our own words
    next_step: page the on-call
    match:
      all:
        - shape: odd-one-out
"""


def test_user_file_goes_first_and_replaces_a_shipped_name(tmp_path: Path) -> None:
    cat = load_catalogue([write(tmp_path, MINE)])
    order = [s.name for s, _ in cat.signatures]
    assert order[:2] == ["my-oom", "odd-rank-out"] and order.count("odd-rank-out") == 1
    procs = tp_pair("vllm_worker_tp0_all_reduce.json", "vllm_worker_idle.json", state1="T")
    (m,) = match_catalogue(cat, facts(*procs))
    assert m.cause == "our own words" and m.source.endswith("mine.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("signatures:\n  - name: x\n    cause: c\n    next_step: n\n    match:\n      all:\n        - log: 'foo('\n",
         "mine.yaml:7: signatures.0.match.all.0.log: the regex 'foo(' does not compile: missing ), unterminated subpattern at position 3"),
        ("signatures:\n  - name: x\n    cause: c\n    next_step: n\n    match:\n      all:\n        - lgo: 'x'\n",
         "mine.yaml:7: unknown key 'lgo' in signatures.0.match.all.0"),
        ("signatures:\n  - name: x\n    cause: c\n    next_step: n\n    match:\n      all:\n        - log: 'x'\n          stack: 'y'\n",
         "mine.yaml:7: signatures.0.match.all.0: a condition has exactly one key (got log, stack;"),
        ("signatures:\n  - name: x\n    cause: c\n    cause: d\n    next_step: n\n",
         "mine.yaml:4: duplicate key 'cause' in signatures.0 (first on line 3)"),
        ("signatures:\n  - name: x\n    cause: 'c {rank}'\n    next_step: n\n    match:\n      any:\n        - state: T\n",
         "mine.yaml:3: signatures.0.cause: unknown placeholder or stray brace"),
        ("signatures:\n  - name: x\n    cause: c\n    next_step: n\n    match:\n      none:\n        - state: T\n",
         "mine.yaml:5: signatures.0.match: match needs at least one condition in `all` or `any`"),
        ("signatures:\n  - name: x\n    cause: c\n    next_step: n\n    match: {all: [{shape: odd}]}\n",
         "mine.yaml:5: signatures.0.match.all.0.shape: Input should be 'odd-one-out', 'same-collective' or 'idle-workers'"),
        ("- just a list\n", "mine.yaml:1: a signature file is a mapping with a `signatures:` list"),
        ("signatures:\n  - name: x\n    cause: c\n    next_step: n\n    match: {any: [{state: T}]}\n"
         "  - name: x\n    cause: c\n    next_step: n\n    match: {any: [{state: D}]}\n",
         "mine.yaml:6: signature name 'x' is used twice in this file"),
    ],
)  # fmt: skip
def test_bad_files_are_one_line_with_the_line_number(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SignatureError) as exc:
        load_catalogue([path])
    message = str(exc.value).replace(str(tmp_path) + "/", "")
    assert message.startswith(expected), message
    assert "\n" not in message and isinstance(exc.value, BadInput)


def test_binary_and_missing_files_are_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"signatures:\x00\x01")
    for path, words in ((binary, "binary data"), (tmp_path / "nope.yaml", "no such file")):
        with pytest.raises(SignatureError, match=words):
            load_catalogue([path])


def test_parse_is_pure_on_text() -> None:
    (sig,) = parse_catalogue(
        "signatures: [{name: a, cause: c, next_step: n, match: {any: [{gpus: one-busy}]}}]", "t"
    )
    assert sig.match.any[0].key == "gpus"


def test_match_to_dict_is_json(tmp_path: Path) -> None:
    m = first(facts(logs=["nccl_watchdog_timeout.log"]))
    doc: Mapping[str, Any] = json.loads(json.dumps(m.to_dict()))
    assert set(doc) == {"name", "cause", "next_step", "links", "evidence", "source"}

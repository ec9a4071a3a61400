"""Parsing real py-spy dumps (captured from vLLM TP=2 and the gloo deadlock fixture)."""

from __future__ import annotations

from pathlib import Path

from harness.watchdog.stacks import Frame, parse_dump, process_wait, signature, thread_wait

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "pyspy"


def wait_of(name: str) -> str:
    w = process_wait(parse_dump((FIX / name).read_text()))
    assert w is not None
    return w.label


def test_parse_threads_and_frames() -> None:
    threads = parse_dump((FIX / "vllm_enginecore_collective_rpc.txt").read_text())
    assert threads[0].name == "MainThread" and threads[0].status == "idle"
    assert len(threads) >= 3
    assert any(not f.is_python for f in threads[0].frames)  # --native frames are kept
    assert all(f.is_python for f in threads[0].python_frames)


def test_where_real_vllm_processes_wait() -> None:
    assert wait_of("vllm_worker_tp0_all_reduce.txt") == "all_reduce"
    assert wait_of("vllm_enginecore_collective_rpc.txt") == "collective_rpc"
    assert wait_of("vllm_api_server.txt") == "the event loop"
    assert wait_of("vllm_worker_idle.txt") == "dequeue"


def test_where_gloo_ranks_wait() -> None:
    assert wait_of("gloo_rank0.txt") == "all_reduce"
    # Generic stdlib waits are named after the first caller outside the standard library.
    assert wait_of("gloo_rank1.txt").startswith("wait_for_data_that_never_comes")


def test_recv_outside_communication_code_is_not_a_collective() -> None:
    text = (
        'Thread 1 (idle): "Monitor"\n'
        "    _ConnectionBase.recv (multiprocessing/connection.py:250)\n"
        "    death_pipe_monitor (vllm/v1/executor/multiproc_executor.py:841)\n"
    )
    w = thread_wait(parse_dump(text)[0])
    assert w is not None and w.category != "collective"


def test_signature_compares_python_frames() -> None:
    a = parse_dump((FIX / "gloo_rank0.txt").read_text())
    b = parse_dump((FIX / "gloo_rank1.txt").read_text())
    assert signature(a) == signature(parse_dump((FIX / "gloo_rank0.txt").read_text()))
    assert signature(a) != signature(b)


def test_frame_kinds() -> None:
    assert Frame("f", "x.py:1").is_python
    assert Frame("<module>", "<string>:3").is_python
    assert not Frame("poll", "libc.so.6").is_python
    assert not Frame("uv_run", "core.c:464").is_python

"""Parsing real py-spy dumps (captured from vLLM TP=2 and the gloo deadlock fixture)."""

from __future__ import annotations

import json
from pathlib import Path

from harness.watchdog.stacks import (
    Frame,
    collective_name,
    parse_dump,
    parse_json_dump,
    process_wait,
    render_text,
    signature,
    thread_wait,
    to_pyspy_json,
)

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
    # vLLM TP=2 without --enforce-eager (compiled graph), Worker_TP1 stopped: Worker_TP0's
    # only sign of the collective is native (c10d::wait_tensor); it used to read execute_model.
    assert wait_of("vllm_worker_tp0_compiled_wait_tensor.txt") == "wait_tensor"
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


def test_simulated_tp_workers_collective_and_stuck_rank() -> None:
    # Real py-spy --native dumps of `harness sim --tp 2 --fault worker-stall:rank=1`: the
    # healthy rank waits in the simulator's own all_reduce (not in communication code), the
    # stalled one sleeps inside execute_model. Neither is "execute_model".
    w0 = process_wait(parse_dump((FIX / "sim_worker_tp0_all_reduce.txt").read_text()))
    assert w0 is not None and (w0.label, w0.category) == ("all_reduce", "collective")
    w1 = process_wait(parse_dump((FIX / "sim_worker_tp1_stuck.txt").read_text()))
    assert w1 is not None and w1.label == "stuck_in_kernel" and w1.category == "other"


def _thread(*frames: str) -> str:
    return 'Thread 27266 (idle): "MainThread"\n' + "".join(f"    {f}\n" for f in frames)


def test_native_collective_frames_count() -> None:
    # A compiled graph calls the collective from C++: no Python frame names it, the native
    # frames do (shapes of py-spy --native lines for gloo, NCCL and vLLM's CPU shm kernel).
    compiled = [
        "call (/tmp/torchinductor_root/ab/cabcdef.py:412)",
        "_support_torch_compile.<locals>.__call__ (vllm/compilation/decorators.py:529)",
        "LlamaForCausalLM.forward (vllm/model_executor/models/llama.py:541)",
        "GPUModelRunner.execute_model (vllm/v1/worker/gpu_model_runner.py:4207)",
        "Worker.execute_model (vllm/v1/worker/gpu_worker.py:1328)",
        "WorkerProc.worker_busy_loop (vllm/v1/executor/multiproc_executor.py:1041)",
    ]
    for native, label in (
        (
            "c10d::ProcessGroupGloo::allreduce(std::vector<at::Tensor, "
            "std::allocator<at::Tensor> >&, c10d::AllreduceOptions const&) (libtorch_cpu.so)",
            "all_reduce",
        ),
        ("ncclAllGather (libnccl.so.2)", "all_gather"),
        ("shm_allreduce(long, at::Tensor&) (_C.abi3.so)", "all_reduce"),
        ("c10d::wait_tensor(at::Tensor const&) (libtorch_cpu.so)", "wait_tensor"),
    ):
        text = _thread(
            "0x7f9fb24a3f16 (libc.so.6)", "pthread_cond_wait (libc.so.6)", native, *compiled
        )
        w = thread_wait(parse_dump(text)[0])
        assert w is not None and (w.label, w.category) == (label, "collective"), native


def test_generic_native_frames_never_name_the_wait() -> None:
    text = _thread(
        "0x7f54b2aa3f16 (libc.so.6)",
        "PyThread_acquire_lock_timed (libpython3.11.so.1.0)",
        "time_sleep (timemodule.c:402)",
        "load_batch (train.py:12)",
        "main (train.py:40)",
    )
    w = thread_wait(parse_dump(text)[0])
    assert w is not None and w.label == "load_batch" and w.category == "other"


def test_telling_native_frame_inside_python_is_named() -> None:
    text = _thread(
        "cudaStreamSynchronize (libcudart.so.12)",
        "RMSNorm.forward (vllm/model_executor/layers/layernorm.py:201)",
        "Worker.execute_model (vllm/v1/worker/gpu_worker.py:1328)",
    )
    w = thread_wait(parse_dump(text)[0])
    assert w is not None and w.label == "forward (cudaStreamSynchronize)"


def test_collective_name_rules() -> None:
    assert collective_name(Frame("all_reduce", "harness/sim/workers.py:67")) == "all_reduce"
    assert (
        collective_name(
            Frame(
                "GroupCoordinator._all_reduce_out_place", "vllm/distributed/parallel_state.py:750"
            )
        )
        == "all_reduce"
    )
    # Common words only inside communication code.
    assert (
        collective_name(Frame("_ConnectionBase.recv", "multiprocessing/connection.py:250")) is None
    )
    assert collective_name(Frame("recv", "torch/distributed/distributed_c10d.py:2500")) == "recv"
    # A tensor broadcast in ATen is not a collective; c10d's is.
    assert (
        collective_name(Frame("at::native::broadcast_to(at::Tensor const&)", "libtorch_cpu.so"))
        is None
    )
    assert (
        collective_name(Frame("c10d::ProcessGroupGloo::broadcast", "libtorch_cpu.so"))
        == "broadcast"
    )
    assert collective_name(Frame("c10d::Work::wait", "libtorch_cpu.so")) is None


def test_real_py_spy_json_dumps_give_the_same_answers_as_the_text() -> None:
    # `py-spy dump --json --native` of the gloo deadlock's ranks (with harness's
    # flight-recorder helper thread, which never counts as where a process waits).
    rank0 = parse_json_dump((FIX / "gloo_rank0.json").read_text())
    rank1 = parse_json_dump((FIX / "gloo_rank1.json").read_text())
    assert [t.name for t in rank0] == ["MainThread", "harness-flight-recorder"]
    main = rank0[0]
    assert main.active is False and main.owns_gil is False and main.status == "idle"
    assert any(
        str(f) == "all_reduce (torch/distributed/distributed_c10d.py:3252)" for f in main.frames
    )
    assert any(not f.is_python for f in main.frames)  # native frames are kept
    w0, w1 = process_wait(rank0), process_wait(rank1)
    assert w0 is not None and w0.label == "all_reduce" and w0.category == "collective"
    assert w1 is not None and w1.label.startswith("wait_for_data_that_never_comes")


def test_json_thread_flags_and_text_rendering() -> None:
    raw = [
        {"os_thread_id": 7, "thread_name": "spinner", "active": True, "owns_gil": True,
         "frames": [{"name": "spin", "short_filename": "<string>", "line": 4},
                    {"name": "clock_nanosleep", "short_filename": "libc.so.6", "line": 0}]},
        {"thread_id": 255, "thread_name": "MainThread", "active": False, "owns_gil": False,
         "frames": [{"name": "<module>", "short_filename": "<string>", "line": 6}]},
    ]  # fmt: skip
    threads = parse_json_dump(json.dumps(raw))
    assert [(t.tid, t.name, t.status) for t in threads] == [
        ("0xFF", "MainThread", "idle"),
        ("7", "spinner", "active+gil"),
    ]
    assert str(threads[1].frames[1]) == "clock_nanosleep (libc.so.6)"
    text = render_text(threads, "Process 7: python -c ...")
    assert text.splitlines()[:4] == [
        "Process 7: python -c ...",
        "",
        'Thread 0xFF (idle): "MainThread"',
        "    <module> (<string>:6)",
    ]
    # The rendered text parses back to the same threads (the text is for people, equal in kind).
    again = parse_dump(text)
    assert [(t.tid, t.status, [str(f) for f in t.frames]) for t in again] == [
        (t.tid, t.status, [str(f) for f in t.frames]) for t in threads
    ]
    # And a text dump becomes py-spy's JSON shape (stacks/<pid>.json from an older py-spy).
    back = to_pyspy_json(parse_dump((FIX / "gloo_rank0.txt").read_text()))
    assert back[-1]["thread_name"] == "MainThread" and back[-1]["frames"][0]["line"] >= 0


def test_not_json_is_no_threads() -> None:
    assert parse_json_dump("Thread 1 (idle)") == [] and parse_json_dump('{"a": 1}') == []


def test_harness_threads_never_make_a_stack_move() -> None:
    a = parse_json_dump((FIX / "gloo_rank0.json").read_text())
    b = parse_json_dump((FIX / "gloo_rank0.json").read_text())
    b[1].frames = b[1].frames[1:]  # the helper thread answered a dump request in between
    assert b[1].name == "harness-flight-recorder"
    assert signature(a) == signature(b)

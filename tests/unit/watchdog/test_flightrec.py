"""Reading PyTorch flight-recorder dumps: the real CPU (Gloo) dumps of the deadlock fixture
(torch 2.13, taken by harness watch --flight-recorder) and NCCL-shaped dumps built in the same
documented format."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from harness.watchdog.flightrec import load_dump, rank_of, read_dumps, recorder_of, render

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "flight_recorder"


def real() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(FIX.glob("nccl_trace_rank_cpu_*"))}


def test_real_gloo_dumps_name_the_rank_that_never_entered() -> None:
    (report,) = read_dumps(real())
    assert report.recorder == "nccl_trace_rank_cpu_" and report.errors == []
    (group,) = report.groups
    assert group.name == "default_pg" and group.ranks == [0, 1]
    assert group.last_seq == 4 and group.last_op == "gloo:all_reduce"
    assert (group.states[0].entered, group.states[0].completed) == (4, 3)
    assert (group.states[1].entered, group.states[1].completed) == (3, 3)
    assert group.never_entered == [1] and group.never_finished == [0] and group.missing == [0, 1]
    assert report.missing_line() == (
        "default_pg: rank 1 never entered and rank 0 never finished collective #4 (gloo:all_reduce)"
    )
    text = "\n".join(render([report]))
    assert "| default_pg | 1 | #3 | #3 | gloo:all_reduce | scheduled |" in text
    assert json.loads(json.dumps(report.to_dict()))["groups"][0]["never_entered"] == [1]


def entry(
    seq: int, state: str, *, op: str = "nccl:all_reduce", pg: str = "default_pg"
) -> dict[str, Any]:
    return {
        "collective_seq_id": seq,
        "profiling_name": op,
        "state": state,
        "process_group": ("0", pg),
        "pg_id": 0,
        "is_p2p": False,
    }


def nccl_dump(*entries: dict[str, Any], ranks: str = "[0, 1, 2]") -> bytes:
    doc = {
        "version": "2.4",
        "pg_config": {"0": {"name": "0", "desc": "default_pg", "ranks": ranks}},
        "entries": list(entries),
    }
    return pickle.dumps(doc)


def test_nccl_shaped_dumps_every_kind_of_missing_rank() -> None:
    files = {
        "nccl_trace_rank_0": nccl_dump(entry(7, "completed"), entry(8, "started")),
        "nccl_trace_rank_1": nccl_dump(entry(7, "completed")),
        # rank 2 left no dump (killed, or its pipe was gone)
    }
    (report,) = read_dumps(files)
    (group,) = report.groups
    assert group.ranks == [0, 1, 2]
    assert group.never_entered == [1] and group.never_finished == [0] and group.no_dump == [2]
    assert "rank 2 left no dump" in report.missing_line()


def test_every_rank_finished() -> None:
    files = {f"t_{r}": nccl_dump(entry(3, "completed"), ranks="[0, 1]") for r in (0, 1)}
    (report,) = read_dumps(files)
    assert report.groups[0].missing == []
    assert report.missing_line() == "every rank finished its last collective"


def test_recorders_are_analysed_apart() -> None:
    files = {**real(), "nccl_trace_rank_0": nccl_dump(entry(1, "completed"), ranks="[0]")}
    assert sorted(r.recorder for r in read_dumps(files)) == [
        "nccl_trace_rank_",
        "nccl_trace_rank_cpu_",
    ]


def test_a_pickle_that_wants_a_class_is_refused() -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("never",))

    with pytest.raises(ValueError, match=r"refusing to load builtins\.print"):
        load_dump(pickle.dumps({"entries": [Evil()]}))
    (report,) = read_dumps({"trace_0": b"garbage"})
    assert report.groups == [] and report.errors[0].startswith(
        "trace_0: not a flight-recorder dump"
    )


def test_json_form_and_names() -> None:
    doc = {"entries": [entry(2, "completed")], "pg_config": {}}
    assert load_dump(json.dumps(doc).encode())["entries"][0]["collective_seq_id"] == 2
    assert rank_of("nccl_trace_rank_12") == 12 and rank_of("x") is None
    assert recorder_of("nccl_trace_rank_cpu_3") == "nccl_trace_rank_cpu_"

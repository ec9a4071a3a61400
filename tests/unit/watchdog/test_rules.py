from __future__ import annotations

from harness.watchdog.rules import (
    CanaryProbe,
    GpuSample,
    MetricsSnapshot,
    ProcSample,
    ProgressTracker,
    SignatureTracker,
    Verdict,
    canary_verdict,
    crash_verdict,
    health_verdict,
    parse_metrics,
    primary,
    request_stall_verdicts,
    silence_verdict,
    startup_verdict,
)

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 10.0
vllm:prompt_tokens_created{engine="0",model_name="m"} 1.7e9
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="m"} 100.0
vllm:generation_tokens_total{engine="1",model_name="m"} 5.0
"""


def test_parse_metrics_sums_label_sets_and_skips_created() -> None:
    snap = parse_metrics(VLLM_METRICS)
    assert snap.generation_tokens == 105.0
    assert snap.prompt_tokens == 10.0
    assert snap.running == 1.0 and snap.waiting == 2.0
    assert snap.progress == 115.0 and snap.in_flight == 3.0


def test_parse_metrics_without_engine_metrics() -> None:
    snap = parse_metrics("# TYPE other gauge\nother 1\n")
    assert snap.progress is None and snap.in_flight is None


def _snap(tokens: float, running: float) -> MetricsSnapshot:
    return MetricsSnapshot(tokens, 0.0, running, 0.0)


def test_progress_tracker_fires_only_when_flat_with_requests_in_flight() -> None:
    t = ProgressTracker(stall_after_s=10)
    assert t.update(0, _snap(5, 1)) is None
    assert t.update(5, _snap(9, 1)) is None  # moving
    assert t.update(14, _snap(9, 1)) is None  # flat for 9 s
    v = t.update(15.5, _snap(9, 1))
    assert v is not None and v.kind == "engine-stall" and v.rule == "metrics"
    # Idle server: flat counters are fine.
    idle = ProgressTracker(stall_after_s=10)
    for now in range(0, 60, 5):
        assert idle.update(now, _snap(9, 0)) is None


def test_canary_fires_after_deadline_only_while_health_answers() -> None:
    probe = CanaryProbe(started_at=100.0)
    assert canary_verdict(probe, now=105, deadline_s=10, health_ok=True) is None
    v = canary_verdict(probe, now=111, deadline_s=10, health_ok=True)
    assert v is not None and v.rule == "canary" and v.kind == "engine-stall"
    assert canary_verdict(probe, now=111, deadline_s=10, health_ok=False) is None
    got = CanaryProbe(started_at=100.0, first_token_at=100.5)
    assert canary_verdict(got, now=200, deadline_s=10, health_ok=True) is None
    assert canary_verdict(None, now=200, deadline_s=10, health_ok=True) is None


def test_health_verdict() -> None:
    assert health_verdict(now=50, last_ok_at=45, stall_after_s=10, alive=True) is None
    assert health_verdict(now=60, last_ok_at=45, stall_after_s=10, alive=True) is not None
    assert health_verdict(now=60, last_ok_at=45, stall_after_s=10, alive=False) is None


def test_startup_verdict_rules() -> None:
    kw = {"started_at": 0.0, "deadline_s": 100.0}
    assert startup_verdict(now=50, healthy=False, **kw) is None
    assert startup_verdict(now=500, healthy=True, **kw) is None
    v = startup_verdict(now=101, healthy=False, **kw)
    assert v is not None and (v.kind, v.rule) == ("startup-hang", "health-deadline")
    v = startup_verdict(now=50, healthy=False, last_log_at=10, log_silence_s=30, **kw)
    assert v is not None and v.rule == "log-silence"
    assert startup_verdict(now=50, healthy=False, last_log_at=30, log_silence_s=30, **kw) is None
    v = startup_verdict(now=5, healthy=False, exit_code=1, **kw)
    assert v is not None and v.kind == "crash"


def test_silence_and_crash() -> None:
    assert silence_verdict(now=10, last_activity_at=0, stall_after_s=15) is None
    v = silence_verdict(now=16, last_activity_at=0, stall_after_s=15, what="heartbeat")
    assert v is not None and v.kind == "output-stall" and "heartbeat" in v.detail
    assert crash_verdict(None) is None
    v = crash_verdict(-9)
    assert v is not None and "-9" in v.detail


def test_request_stall_records() -> None:
    recs = [{"status": "ok"}, {"status": "stalled", "request_id": "r7", "output_tokens": 3}]
    (v,) = request_stall_verdicts(recs)
    assert v.kind == "request-stall" and "r7" in v.detail and "3" in v.detail


def test_primary_prefers_crash_then_engine_stall() -> None:
    sig = Verdict("process-signature", "process-state", "x")
    eng = Verdict("engine-stall", "metrics", "y")
    crash = Verdict("crash", "exit", "z")
    assert primary([sig, eng]) is eng
    assert primary([sig, eng, crash]) is crash


def _p(pid: int, state: str = "S", cpu: float | None = 0.0) -> ProcSample:
    return ProcSample(pid, f"Worker_TP{pid}", state, cpu)


def test_signature_stopped_process_must_persist() -> None:
    t = SignatureTracker(persist_s=10)
    assert t.update(0, [_p(0), _p(1, "T")]) == []
    assert t.update(9, [_p(0), _p(1, "T")]) == []
    (v,) = t.update(10, [_p(0), _p(1, "T")])
    assert v.rule == "process-state" and v.pids == (1,) and "state T" in v.detail
    # It continued: the clock resets.
    assert t.update(11, [_p(0), _p(1, "S")]) == []
    assert t.update(20, [_p(0), _p(1, "T")]) == []


def test_signature_spinner_needs_no_progress() -> None:
    procs = [_p(0, "R", 99.0), _p(1, "S", 1.0), _p(2, "S", 0.0)]
    t = SignatureTracker(persist_s=5)
    assert t.update(0, procs, no_progress=False) == []
    assert t.update(10, procs, no_progress=False) == []
    assert t.update(11, procs, no_progress=True) == []
    (v,) = t.update(16, procs, no_progress=True)
    assert v.rule == "spin" and v.pids == (0,)


def test_signature_gpu_imbalance() -> None:
    gpus = [GpuSample(0, 100.0), GpuSample(1, 0.0), GpuSample(2, 3.0)]
    t = SignatureTracker(persist_s=5)
    assert t.update(0, [], gpus=gpus, no_progress=True) == []
    (v,) = t.update(6, [], gpus=gpus, no_progress=True)
    assert v.rule == "gpu-imbalance" and "GPU 0" in v.detail
    balanced = [GpuSample(0, 100.0), GpuSample(1, 100.0)]
    assert SignatureTracker(persist_s=0).update(0, [], gpus=balanced, no_progress=True) == []

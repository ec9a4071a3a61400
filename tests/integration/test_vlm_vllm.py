"""The tiny VLM (``harness tiny-model --kind vlm``) on the real vLLM CPU server: it answers chat
requests with images at TP=1 and TP=2; with ``vlm-safe`` the image tokens stop growing at the
profile's cap (a 12 MP photo costs what the image the server scales it to costs) and a third
image is refused; without it they keep growing; ``harness load -w vlm-mixed`` runs against it
and the server's token counts agree with the sizes recorded in requests.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.load.images import data_url, make_image
from harness.tinymodel import VLM_MIN_PIXELS
from tests.conftest import free_port, have_module, require
from tests.integration.harnesscli import only_dir, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VLM_SAFE_MAX_PIXELS = 1003520  # profiles/vlm-safe.yaml, both sides
TINY_VLM_MAX_PIXELS = 12845056  # the tiny VLM's own processor default


@pytest.fixture
def model(tiny_vlm_dir: Path) -> Path:
    require(have_module("vllm"), "vLLM CPU build (make install-vllm)")
    return tiny_vlm_dir


def image_tokens(width: int, height: int, max_pixels: int) -> int:
    """What the model's processor makes of an image: one token per 28×28 pixels after its
    resize (transformers' own function, which vLLM's PaddleOCR-VL counting mirrors)."""
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import smart_resize

    h, w = smart_resize(height, width, factor=28, min_pixels=VLM_MIN_PIXELS, max_pixels=max_pixels)
    return (h // 28) * (w // 28)


def serve(runs: Path, model: Path, *args: str) -> dict[str, Any]:
    """``harness serve --detach`` of the tiny VLM; returns the launch spec."""
    done = run(
        runs, "serve", "--model", str(model), "--port", str(free_port()), "--detach",
        "--no-watch", *args, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    spec: dict[str, Any] = json.loads((only_dir(runs) / "launch_spec.json").read_text())
    return spec


def chat(spec: dict[str, Any], *sizes: tuple[int, int], seed: int = 0) -> httpx.Response:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "what is in the image"}]
    for slot, (width, height) in enumerate(sizes):
        url = data_url(make_image(width, height, "jpeg", (seed, width, height, slot)), "jpeg")
        parts.append({"type": "image_url", "image_url": {"url": url}})
    body = {
        "model": spec["served_model_name"],
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": 4,
    }
    return httpx.post(f"{spec['base_url']}/v1/chat/completions", json=body, timeout=300)


def prompt_tokens(spec: dict[str, Any], *sizes: tuple[int, int]) -> int:
    response = chat(spec, *sizes)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert isinstance(answer["choices"][0]["message"]["content"], str)
    assert answer["usage"]["completion_tokens"] > 0
    return int(answer["usage"]["prompt_tokens"])


def load(runs: Path, run_id: str, *args: str) -> list[dict[str, Any]]:
    done = run(
        runs, "load", "--run", run_id, "-w", "vlm-mixed", "--max-tokens", "4", "--no-progress",
        *args, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (runs / run_id / "requests.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records and all(r["status"] == "ok" for r in records), records
    return records


def check_records_against_server(records: list[dict[str, Any]], max_pixels: int) -> None:
    """The server's prompt tokens minus the recorded images' tokens (and their start/end
    markers) minus the planned text tokens is the chat template's share: the same for all."""
    overheads = set()
    for r in records:
        images = r["images"]
        assert 1 <= len(images) <= 2
        counted = sum(image_tokens(i["width"], i["height"], max_pixels) + 2 for i in images)
        overheads.add(r["prompt_tokens"] - r["prompt_tokens_planned"] - counted)
    assert len(overheads) == 1, overheads


def test_vlm_safe_caps_image_tokens_at_tp1(model: Path, campaign_runs: Path) -> None:
    spec = serve(campaign_runs, model, "--profile", "eager,vlm-safe")
    assert spec["warnings"] == []  # the server's cap and the load's agree
    argv = spec["argv"]
    assert json.loads(argv[argv.index("--mm-processor-kwargs") + 1]) == {
        "max_pixels": VLM_SAFE_MAX_PIXELS
    }

    thumbnail = prompt_tokens(spec, (224, 224))
    photo = prompt_tokens(spec, (4000, 3000))  # 12 MP
    # The image the server scales the photo to (1148×840, 41×30 tokens), sent as it is.
    at_cap = prompt_tokens(spec, (41 * 28, 30 * 28))
    huge = prompt_tokens(spec, (8000, 6000))  # 48 MP
    assert photo == at_cap == huge
    assert photo - thumbnail == 41 * 30 - 8 * 8
    assert photo - thumbnail <= VLM_SAFE_MAX_PIXELS // 784

    refused = chat(spec, (224, 224), (224, 224), (224, 224))
    assert refused.status_code == 400
    assert "At most 2 image(s)" in refused.text

    records = load(campaign_runs, spec["run_id"], "-n", "4", "-c", "2")
    for r in records:
        assert all(i["width"] * i["height"] <= VLM_SAFE_MAX_PIXELS for i in r["images"])
    check_records_against_server(records, VLM_SAFE_MAX_PIXELS)
    assert run(campaign_runs, "down", spec["run_id"], timeout=120).returncode == 0


def test_without_a_limit_image_tokens_keep_growing_at_tp2(model: Path, campaign_runs: Path) -> None:
    spec = serve(campaign_runs, model, "--profile", "eager", "--tp", "2")
    assert spec["tp"] == 2 and spec["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"

    thumbnail = prompt_tokens(spec, (224, 224))
    photo = prompt_tokens(spec, (2000, 1500))  # 3 MP: past vlm-safe's cap, under the model's
    assert photo - thumbnail == image_tokens(2000, 1500, TINY_VLM_MAX_PIXELS) - 64 == 54 * 71 - 64
    assert photo - thumbnail > VLM_SAFE_MAX_PIXELS // 784

    # A short vlm-mixed load, its images capped on the client only (12 MP photos uncapped
    # take minutes each on two cores: see docs/benchmarks.md).
    records = load(
        campaign_runs, spec["run_id"], "-n", "3", "-c", "1", "--max-image-pixels",
        str(VLM_SAFE_MAX_PIXELS),
    )  # fmt: skip
    check_records_against_server(records, TINY_VLM_MAX_PIXELS)
    assert run(campaign_runs, "down", spec["run_id"], timeout=120).returncode == 0

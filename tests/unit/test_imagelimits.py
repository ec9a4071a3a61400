from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.hostfacts import model_facts
from harness.imagelimits import ServerImageLimits, image_limit_warnings, server_image_limits
from harness.plan import HostFacts, PlanRequest, make_plan
from harness.spec import LoadLimits

CPU = HostFacts(device="cpu", cpu_count=2, python="/venv/bin/python")
GPU = HostFacts(device="cuda", cpu_count=32, gpu_count=2, python="/venv/bin/python")
VLM_SAFE = LoadLimits(max_image_pixels=1003520, max_images_per_request=2)


def plan(
    *profiles: str, engine: str = "vllm", engine_args: tuple[str, ...] = (), tp: int = 1
) -> list[str]:
    spec = make_plan(
        PlanRequest(
            engine=engine,
            model="/models/tiny-vlm",
            run_id="r1",
            runs_root="/runs",
            model_is_local_dir=True,
            tp=tp,
            profiles=("default", *profiles),
            engine_args=engine_args,
        ),
        CPU if engine == "vllm" else GPU,
    )
    return spec.warnings


@pytest.mark.parametrize(
    ("argv", "limits"),
    [
        ([], ServerImageLimits()),
        (
            ["--limit-mm-per-prompt", '{"image": 2}', "--mm-processor-kwargs", '{"max_pixels": 9}'],
            ServerImageLimits(max_pixels=9, max_images=2),
        ),
        # argparse: the last one wins; = and dotted forms (vLLM's JSON-argument syntax).
        (
            [
                "--mm-processor-kwargs",
                '{"max_pixels": 9}',
                '--mm-processor-kwargs={"max_pixels": 7}',
            ],
            ServerImageLimits(max_pixels=7),
        ),
        (["--mm-processor-kwargs.max_pixels", "5"], ServerImageLimits(max_pixels=5)),
        (["--limit-mm-per-prompt.image=3"], ServerImageLimits(max_images=3)),
        # transformers 5 names the cap size.longest_edge; max_pixels wins over it.
        (["--mm-processor-kwargs", '{"size": {"longest_edge": 8}}'], ServerImageLimits(8)),
        (
            ["--mm-processor-kwargs", '{"size": {"longest_edge": 8}, "max_pixels": 6}'],
            ServerImageLimits(max_pixels=6),
        ),
        (["--mm-processor-kwargs", '{"images_kwargs": {"max_pixels": 4}}'], ServerImageLimits(4)),
        (
            ["--limit-mm-per-prompt", '{"image": {"count": 1, "width": 512, "height": 512}}'],
            ServerImageLimits(max_images=1),
        ),
        # Not limits: other modalities, other keys, no JSON object.
        (["--limit-mm-per-prompt", '{"video": 1}'], ServerImageLimits()),
        (["--mm-processor-kwargs", '{"num_crops": 4}'], ServerImageLimits()),
        (["--mm-processor-kwargs", "[1]", "--limit-mm-per-prompt"], ServerImageLimits()),
    ],
)
def test_server_image_limits_from_vllm_argv(argv: list[str], limits: ServerImageLimits) -> None:
    assert server_image_limits("vllm", ["python", "-m", "x", *argv]) == limits


def test_only_vllm_has_server_side_limits() -> None:
    argv = ["--mm-processor-kwargs", '{"max_pixels": 9}']
    assert server_image_limits("lmdeploy", argv) == ServerImageLimits()


def test_limits_that_agree_say_nothing() -> None:
    argv = ["--limit-mm-per-prompt", '{"image": 2}', "--mm-processor-kwargs", '{"max_pixels": 7}']
    assert (
        image_limit_warnings("vllm", argv, LoadLimits(max_image_pixels=7, max_images_per_request=2))
        == []
    )
    assert image_limit_warnings("vllm", [], LoadLimits()) == []
    assert image_limit_warnings("sim", [], VLM_SAFE) == []


def test_vlm_safe_sets_both_sides_alike() -> None:
    assert plan("eager", "vlm-safe") == []
    assert plan("eager", "vlm-safe", tp=2) == []


def test_a_server_cap_that_differs_from_the_load_cap_is_a_warning() -> None:
    (warning,) = plan(
        "vlm-safe", engine_args=("--mm-processor-kwargs '{\"max_pixels\": 2000000}'",)
    )
    assert warning.startswith(
        "the server scales images down to 2000000 pixels (--mm-processor-kwargs max_pixels) "
        "but harness load scales them to 1003520 (load.max_image_pixels): make them agree"
    )
    (warning,) = plan("vlm-safe", engine_args=("--limit-mm-per-prompt.image 4",))
    assert "refuses more than 4 images per request" in warning
    assert "harness load sends at most 2 (load.max_images_per_request)" in warning


def test_one_side_without_a_limit_is_a_warning() -> None:
    warnings = plan(
        engine_args=("--mm-processor-kwargs.max_pixels 1000 --limit-mm-per-prompt.image 1",)
    )
    assert len(warnings) == 2
    assert "no load.max_image_pixels" in warnings[0]
    assert "requests over the limit fail" in warnings[1]
    assert all("vlm-safe sets both sides" in w for w in warnings)
    only_load = image_limit_warnings("vllm", [], VLM_SAFE)
    assert only_load[0].startswith(
        "harness load scales them to 1003520 (load.max_image_pixels) but the server sets no "
        "pixel limit (--mm-processor-kwargs max_pixels)"
    )


def test_lmdeploy_has_no_server_side_pixel_cap() -> None:
    (warning,) = plan("vlm-safe", engine="lmdeploy")
    assert "LMDeploy has no server-side pixel limit" in warning
    assert plan("eager", engine="lmdeploy") == []


def test_a_vlm_config_plans_at_tp2(tmp_path: Path) -> None:
    # The tiny VLM's config.json (harness tiny-model --kind vlm): the language model's settings
    # under text_config, the vision tower's under vision_config.
    config = {
        "architectures": ["PaddleOCRVLForConditionalGeneration"],
        "model_type": "paddleocr_vl",
        "text_config": {"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512},
        "vision_config": {"num_attention_heads": 4, "hidden_size": 64},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    facts = model_facts(str(tmp_path))
    assert (facts.num_attention_heads, facts.num_kv_heads, facts.vocab_size) == (4, 2, 512)
    spec = make_plan(
        PlanRequest(
            engine="vllm",
            model=str(tmp_path),
            run_id="r1",
            runs_root="/runs",
            model_is_local_dir=True,
            tp=2,
            profiles=("default", "eager", "vlm-safe"),
            model_facts=facts,
        ),
        CPU,
    )
    assert spec.tp == 2 and spec.warnings == []

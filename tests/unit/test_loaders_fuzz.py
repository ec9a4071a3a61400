"""Property: every loader of a file a user hands in, given any bytes, returns a result or raises
a BadInput subclass (one line, exit code 2), never any other exception.

Loaders: profiles, workloads, the JSONL and ShareGPT prompt files workloads name, a model's
config.json, a pre-sharded copy's harness-shard.json. Inputs: arbitrary bytes; YAML and JSON
documents built from the keys the schemas know (so validation runs deep, not only the parser);
YAML-flavoured text.
``HARNESS_FUZZ_EXAMPLES=5000`` searches harder than the default.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import BadInput, PlanError
from harness.hostfacts import model_facts
from harness.load import workload as workload_module
from harness.load.workload import MAX_LENGTH, PromptSpec, load_workload, read_prompt_file
from harness.plan import HostFacts, PlanRequest, make_plan
from harness.profiles import load_profile
from harness.shard.store import META_FILE, read_meta
from harness.watchdog.matching import Facts, match_catalogue
from harness.watchdog.signatures import load_catalogue

FUZZ = settings(
    max_examples=int(os.environ.get("HARNESS_FUZZ_EXAMPLES", "60")),
    deadline=None,  # no timed assertions
    database=None,  # nothing written into the repository
)

# Keys the schemas know, so generated documents reach pydantic validation and line lookups.
KNOWN_KEYS = [
    *("description", "warning", "env", "vllm", "lmdeploy", "sim", "container", "deadlines"),
    *("watch", "load", "args", "image", "ipc_mode", "shm_size", "cap_add", "ulimits"),
    *("volumes", "gpus", "bind", "mode", "startup_s", "stall_after_s", "on_hang", "--x"),
    *("api", "stream", "prompt", "source", "path", "field", "tokens", "max_tokens", "images"),
    *("count", "sizes", "width", "height", "weight", "format", "dist", "min", "max", "value"),
    *("mean", "std", "median", "sigma", "extra_body", "temperature", "conversations", "from"),
    *("num_attention_heads", "num_key_value_heads", "vocab_size", "text_config", "prompt"),
    *("multi_query", "model_type", "kv_lora_rank", "attn_config", "kv_n_heads", "<<"),
]
KNOWN_VALUES = ["chat", "completions", "synthetic", "jsonl", "sharegpt", "fixed", "uniform"]
KNOWN_VALUES += ["normal", "lognormal", "jpeg", "png", "host", "human", "falcon", "{run_dir}"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.sampled_from(KNOWN_VALUES)
    | st.text(max_size=12)
)
keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=8)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)
yaml_documents = documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode())
json_documents = documents.map(lambda d: json.dumps(d).encode())
jsonl_documents = st.lists(documents, max_size=5).map(
    lambda items: "\n".join(json.dumps(i) for i in items).encode()
)
# Numbers where limits live: lengths, weights and deadlines that load but fail once used.
numbers = st.integers(min_value=-10, max_value=2**70) | st.floats()
lengths = numbers | st.fixed_dictionaries(
    {"dist": st.sampled_from(["fixed", "uniform", "normal", "lognormal", "zipf"])},
    optional={k: numbers for k in ("value", "min", "max", "mean", "std", "median", "sigma")},
)
image_sizes = st.fixed_dictionaries(
    {"width": numbers, "height": numbers}, optional={"weight": numbers}
)
workload_settings = st.fixed_dictionaries(
    {},
    optional={
        "api": st.sampled_from(["chat", "completions"]),
        "prompt": st.fixed_dictionaries({}, optional={"tokens": lengths}),
        "max_tokens": lengths,
        "images": st.fixed_dictionaries(
            {"sizes": st.lists(image_sizes, max_size=3)}, optional={"count": lengths}
        ),
    },
).map(lambda d: yaml.safe_dump(d).encode())
profile_settings = st.fixed_dictionaries(
    {},
    optional={
        "deadlines": st.dictionaries(st.sampled_from(["startup_s", "request_s"]), numbers),
        "watch": st.dictionaries(st.sampled_from(["stall_after_s", "engine_stall_s"]), numbers),
        "load": st.dictionaries(st.sampled_from(["max_image_pixels"]), numbers),
        "container": st.dictionaries(st.sampled_from(["ulimits"]), st.dictionaries(keys, numbers)),
    },
).map(lambda d: yaml.safe_dump(d).encode())
# Signature files (--signatures): conditions with any text as the regex or value.
conditions = st.dictionaries(
    st.sampled_from(["log", "stack", "shape", "state", "gpus", "kind", "env", "nope"]),
    scalars | st.text(alphabet="()[]*+?\\.|^$abc{}", max_size=10),
    min_size=1,
    max_size=2,
)
signature_settings = st.fixed_dictionaries(
    {
        "signatures": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["a", "b-1", "Bad Name"]), "cause": scalars},
                optional={
                    "next_step": st.text(alphabet="ab{}odd ", max_size=10),
                    "match": st.dictionaries(
                        st.sampled_from(["all", "any", "none", "also", "x"]),
                        st.lists(conditions, max_size=3),
                    ),
                },
            ),
            max_size=3,
        )
    },
    optional={"version": st.sampled_from([1, 2, "1"])},
).map(lambda d: yaml.safe_dump(d).encode())
yaml_flavoured = st.text(
    alphabet=st.sampled_from([*":-[]{}&*!|>'\"#%@`, ?\n\t\\abcxyz019.<", "\u2028", "\ufeff"]),
    max_size=120,
).map(str.encode)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _profile(d: Path, data: bytes) -> object:
    return load_profile(str(_write(d / "p.yaml", data)))


def _workload(d: Path, data: bytes) -> object:
    workload, _ = load_workload(str(_write(d / "w.yaml", data)))
    # A workload that loads must also run: every length it names can be sampled and bounded.
    rng = random.Random(0)
    lengths = [workload.prompt.tokens, workload.max_tokens]
    if workload.images is not None:
        lengths.append(workload.images.count)
        rng.choices(workload.images.sizes, weights=[s.weight for s in workload.images.sizes])
    for length in lengths:
        assert 0 <= length.upper <= MAX_LENGTH
        for _ in range(5):
            assert 0 <= length.sample(rng) <= length.upper
    return workload


def _prompts(source: str) -> Callable[[Path, bytes], object]:
    def load(d: Path, data: bytes) -> object:
        path = _write(d / f"prompts.{source}", data)
        # A rewrite within one timestamp tick could hit the cache of the previous example.
        workload_module._parse_prompt_file_cached.cache_clear()
        spec = PromptSpec(source=source, path=path.name)  # type: ignore[arg-type]
        return read_prompt_file(spec, d)

    return load


def _model_config(d: Path, data: bytes) -> object:
    _write(d / "model" / "config.json", data)
    facts = model_facts(str(d / "model"))
    # Whatever the file states, planning with it answers with a plan or one PlanError line.
    for tp in (1, 3, 8):
        for engine in ("vllm", "lmdeploy"):
            request = PlanRequest(
                engine=engine,
                model=str(d / "model"),
                run_id="r",
                runs_root="/runs",
                tp=tp,
                model_is_local_dir=True,
                model_facts=facts,
            )
            try:
                make_plan(request, HostFacts(device="cpu", cpu_count=4))
            except PlanError as exc:
                assert "\n" not in str(exc)
    return facts


def _shard_meta(d: Path, data: bytes) -> object:
    _write(d / "shard" / META_FILE, data)
    return read_meta(d / "shard")


def _signatures(d: Path, data: bytes) -> object:
    catalogue = load_catalogue([_write(d / "sigs.yaml", data)])
    # Whatever a file that loads says, matching it answers (no regex error at match time).
    return match_catalogue(catalogue, Facts(logs=[]))


LOADERS: dict[str, tuple[Callable[[Path, bytes], object], Any]] = {
    "profile": (_profile, yaml_documents | yaml_flavoured | profile_settings),
    "workload": (_workload, yaml_documents | yaml_flavoured | workload_settings),
    "jsonl prompt file": (_prompts("jsonl"), jsonl_documents),
    "sharegpt prompt file": (_prompts("sharegpt"), json_documents),
    "model config.json": (_model_config, json_documents),
    "shard metadata": (_shard_meta, json_documents),
    "signature file": (_signatures, yaml_documents | yaml_flavoured | signature_settings),
}


def _load_or_bad_input(loader: Callable[[Path, bytes], object], d: Path, data: bytes) -> None:
    try:
        loader(d, data)
    except BadInput as exc:
        assert str(exc).strip(), "a BadInput always says what is wrong"
        assert "\n" not in str(exc), f"one line, not: {exc!r}"


@pytest.mark.parametrize("name", list(LOADERS))
@FUZZ
@given(data=st.binary(max_size=512))
def test_any_bytes(workdir: Path, name: str, data: bytes) -> None:
    _load_or_bad_input(LOADERS[name][0], workdir / name, data)


@pytest.mark.parametrize("name", list(LOADERS))
@FUZZ
@given(data=st.data())
def test_documents_in_the_loaders_format(workdir: Path, name: str, data: st.DataObject) -> None:
    loader, documents_of_its_format = LOADERS[name]
    _load_or_bad_input(loader, workdir / name, data.draw(documents_of_its_format))

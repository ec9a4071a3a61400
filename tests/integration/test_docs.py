"""Docs that run: every example command of README.md and docs/*.md is checked against harness.

**What counts.** In a fenced code block of README.md or docs/*.md, a line that starts with
``harness `` or ``make `` (after indentation) is an example; a trailing ``\\`` joins the next
line, a trailing ``# comment`` is dropped, ``&&`` chains several commands in one example. An
example that shows a grammar rather than a command line (``[...]``, ``(...)``, ``a|b``, ``...``
outside quotes) is a *synopsis*; its indented lines below continue it. Inline code in the prose
(single backticks) and lines that start with anything else (``docker``, ``scripts/...``,
``.venv/bin/python ...``, ``curl``) are not examples. The same text in several places is one
example.

**Every example is checked as written** (``test_every_example_parses``): a ``harness`` command
is parsed by the command's own click parser without running it (``clickparse.py``: an option
that does not exist, a bad value or a choice that is not one fails); a synopsis may only name
options the command has, and alternatives that are valid choices; a ``make`` example must be a
target ``make -n`` can plan, and the ``harness`` command its recipe prints must parse too.
Relative files an example names (``my-hangs.yaml``, ``train.py``) exist in the scratch
directory it is parsed in.

**Every example that can run here runs** (``test_example_runs``), against the simulated engine,
the tiny model (``tiny_model_dir``) or, for the one example in :data:`REAL_ENGINE`, the real
vLLM CPU server, after these rewrite rules and no others (:func:`rewrite`):

1. *runs*: every example runs with a fresh runs directory of its own (``HARNESS_RUNS_DIR``);
2. *model*: a model path (``./tiny``, ``./tiny-model``, ``.cache/tiny-model``, ``/models/...``,
   ``./models/...``, ``M``) is the tiny model; a command that starts servers from it (serve,
   repro-startup, soak, compare, replay) serves ``--engine sim --model sim`` instead, except
   the examples in :data:`REAL_ENGINE`;
3. *runs named*: ``RUN_ID``, ``<run-id>`` or a dated run id is a detached simulated
   server this module prepared (with requests recorded; ``harness down RUN_ID`` gets one of its
   own to stop); ``runs/RUN_ID/incidents/1`` is a stall incident of the simulator filed while
   ``harness load --run`` had requests in flight;
4. *servers and ports*: ``http://127.0.0.1:8000`` and ``URL`` are a running simulator;
   commands that bind a port (serve, sim, the campaigns, replay with plan options) get a free
   ``--port``; ``harness down --all`` runs with ``DOCKER_HOST`` pointing nowhere, so that it
   stops this example's runs and never another user's containers;
5. *durations and counts*: ``--duration`` is 4 s, ``--ramp`` 2 s, ``--runs`` 2, ``--requests``
   / ``-n`` / ``--num-prompts`` at most 20, ``--times`` and ``--repeats`` 1;
6. *files and processes*: ``train.py`` is ``tests/fixtures/train.py`` (a few Gloo all-reduces),
   ``my-hangs.yaml`` a valid signature file, ``/tmp/hb`` and ``--dest`` paths are in the test's
   directory, ``--pid 4242`` is a sleeping Python process, and ``python`` / ``torchrun`` are
   this environment's.

A command that serves in the foreground (``serve`` without ``--detach``, ``sim``) runs until it
is healthy, then gets Ctrl-C (SIGINT), which "stops the server and every one of its processes"
(README.md): it must end (:data:`CTRL_C_EXIT`) and leave nothing running. Every other command
must end with the exit code :data:`EXIT_CODES` gives (0 otherwise); none may print a traceback
or leave a server running; :data:`PROMISES` checks what a few sections say the output is.
:data:`NOT_RUN` lists every example that is only parsed, and why.

Budget: a few minutes on two cores (4 min 4 s measured here on 2026-12-01, other tests running:
34 s of it the one example on the real vLLM, about 1 min the compare examples).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from harness.records import read_json
from tests.conftest import REPO, free_port, have_module, require
from tests.integration.harnesscli import (
    finish,
    first_line,
    harness_argv,
    only_dir,
    run,
    spawn,
    start,
    stop,
    stop_all_under,
    wait_for,
)
from tests.integration.servers import answers, sim_server, wait_healthy

pytestmark = pytest.mark.integration

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: Examples that are parsed but not run here, and why.
NOT_RUN: dict[str, str] = {
    "make serve": "the same harness serve as `harness serve --model ./tiny --profile eager`, "
    "which runs on the real vLLM below; make's own part installs into the shared .venv",
    "make test": "it is this test suite",
    "make images": "builds Docker images (minutes when anything changed); "
    "tests/integration/test_images.py runs it twice",
    "make tiny-vlm": "writes the repository's .cache; the tiny_vlm_dir fixture builds the same "
    "model with harness tiny-model --kind vlm",
    "harness plan --engine lmdeploy --model /models/qwen --tp 2 --profile debug --format shell": (
        "LMDeploy serves on GPUs only: without one here, harness plan refuses it unless told "
        "--device cuda (test_cli_bad_input.py checks that refusal)"
    ),
    "harness soak --resume RUN_ID": "needs a soak whose harness was killed: test_campaign_sim.py"
    "::test_soak_killed_with_sigkill_and_resumed_counts_every_request_once does exactly that",
    "harness soak --resume 20261201-101500-soak-vllm-tp2-3fa9": "as `harness soak --resume "
    "RUN_ID` (test_campaign_sim.py)",
    "harness fetch Qwen/Qwen2.5-0.5B-Instruct": "a hub download: no hub is reachable here "
    "(test_fetch.py runs harness fetch against a local stand-in for the hub)",
    "harness fetch Qwen/Qwen2.5-0.5B-Instruct --source modelscope": "a ModelScope download: no "
    "hub is reachable here",
    "harness serve --model Qwen/Qwen2.5-0.5B-Instruct --tp 2": "serves the copy a hub download "
    "made (test_fetch.py: plans use the fetched copy)",
    "harness serve --model Qwen/Qwen2.5-0.5B-Instruct --fetch": "a hub download first",
    "harness shard ./models/qwen --tp 2": "vLLM's CPU backend cannot make a complete sharded "
    "copy (it repacks the linear layers): harness refuses it, which test_shard.py checks; "
    "the copy is for GPU hosts",
    "harness shard ./models/qwen --tp 4 --runtime docker --engine-arg '--dtype bfloat16'": (
        "TP 4 on GPUs (bfloat16 weights) in a container"
    ),
    "harness serve --model ./models/qwen --tp 2": "its point is the pre-sharded copy, which "
    "only a GPU host makes (above)",
    "harness repro-startup --model /shared/models/m --tp 8 --runs 50 --slurm --partition gpu "
    "--slurm-time 45:00": "a SLURM cluster with a GPU partition and 8 GPUs per task "
    "(test_campaign_slurm.py runs --slurm campaigns on the one-node cluster here)",
    "harness compare --model /shared/models/m --tp 4,8 --profile default --profile nccl-safe "
    "--repeats 3 --duration 10m --rate 2 --slurm --partition gpu": "a SLURM cluster with a GPU "
    "partition (test_campaign_slurm.py runs --slurm campaigns on the one-node cluster here)",
    "harness compare --engine vllm --model .cache/tiny-model --tp 1,2 --workload chat-short "
    "--requests 100": "a benchmark: about 4 minutes of the real vLLM (test_compare_vllm.py "
    "runs the same comparison with 40 requests)",
    "harness watch --stall-after 120 -- torchrun --nproc-per-node 8 train.py": "8 ranks of "
    "torch on 2 cores; the 2-rank form of the same command runs (README)",
    "harness dump --slurm-job 2180718": "a SLURM job of a real deployment (test_dump_slurm.py "
    "dumps a job on the one-node cluster here)",
    "harness dump --hosts c1,c2 --rsh 'docker exec {host}'": "containers c1 and c2 of a real "
    "multi-node deployment (test_dump_remote.py runs the remote script with sh through a "
    "stand-in for the remote shell)",
    "harness doctor --model ./tiny-model --tp 2 --runtime docker --json": "doctor in containers "
    "of the plan: test_doctor.py::test_doctor_in_a_container_tp2 runs exactly this",
    "harness serve --model ./tiny --tp 2 --runtime docker --preflight": "doctor's checks in "
    "containers, then a server in one: test_doctor.py and test_docker_runtime.py run both",
    "harness serve --model ./tiny-model --tp 2 --runtime docker --preflight": "as README's "
    "`harness serve --model ./tiny --tp 2 --runtime docker --preflight`",
    "harness serve --engine vllm --model /models/llama --tp 2 --profile debug --runtime docker": (
        "the real vLLM at TP 2 in a container: test_docker_vllm.py::"
        "test_serve_tp2_debug_in_a_container runs exactly this (minutes)"
    ),
    # Multi-node: two real hosts (gpu7, gpu8) or a SLURM job of a real deployment.
    "harness doctor --model /models/m --tp 2 --nodes 2 --node-hosts gpu7,gpu8": "two real "
    "hosts over ssh (test_multinode.py runs doctor --nodes on a test cluster of containers)",
    "harness serve --model /models/m --tp 2 --nodes 2 --node-hosts gpu7,gpu8 --detach": "two "
    "real hosts over ssh (test_multinode.py serves on a test cluster of containers)",
    "harness dump --hosts gpu7,gpu8": "two real hosts over ssh (test_dump_remote.py and "
    "test_multinode.py dump over a stand-in remote shell and a test cluster)",
    "harness dump --slurm-job 2180718 --remote-py-spy ~/venv/bin/py-spy": "a SLURM job of a real "
    "deployment (test_dump_slurm.py dumps a job on the one-node cluster here)",
    "harness dump --slurm-job JOB --remote-py-spy ~/venv/bin/py-spy": "a SLURM job of a real "
    "deployment (test_dump_slurm.py dumps a job on the one-node cluster here)",
    "harness plan --model /models/m --tp 2 --nodes 2 --node-hosts gpu7,gpu8": "harness plan "
    "reaches each node over ssh to plan it: two real hosts (test_multinode.py plans on a test "
    "cluster of containers)",
    # Too slow for this module, run elsewhere.
    "harness compare --engine sim --model sim --tp 1,2 --requests 200 -c 16 "
    "--max-rate-under-slo ttft=200ms,tpot=50ms": "the SLO search takes over 2 minutes here even "
    "at 20 requests: test_campaign_sim.py::test_compare_on_the_simulator_tests_cells_and_"
    "searches_the_slo runs compare --max-rate-under-slo on the simulator",
}


#: Examples run on the real engine (rule 2 does not turn them into the simulator).
REAL_ENGINE = {"harness serve --model ./tiny --profile eager"}

#: Exit codes other than 0 that an example ends with here, and why.
EXIT_CODES: dict[str, tuple[set[int], str]] = {
    "harness replay runs/RUN_ID/incidents/1 --times 10": (
        {1},
        "the incident's own plan injects the stall: the hang comes back (exit 1)",
    ),
    "harness replay runs/<run-id>/incidents/1 --times 10": (
        {1},
        "the incident's own plan injects the stall: the hang comes back (exit 1)",
    ),
    "harness repro-startup --engine sim --model sim --fault startup-hang:p=0.2 --runs 30 "
    "--startup-timeout 5": ({0, 1}, "exit 1 when one of the starts hung (p=0.2 each)"),
}

#: How a server in the foreground may end on Ctrl-C: 0, or killed by the SIGINT (a shell's 130).
#: Found by this test: about one ``harness serve`` in twenty ends the second way after printing
#: "stopped" (CPython's exit for a KeyboardInterrupt it saw unhandled); reported to the owner of
#: harness/campaign/serve.py, which README.md's promise here does not depend on.
CTRL_C_EXIT = {0, -signal.SIGINT}

#: The keys README.md calls a stable contract of ``harness plan --format json``.
PLAN_KEYS = {"engine", "model", "tp", "profiles", "runtime", "argv", "env", "container",
             "health_url", "base_url", "deadlines"}  # fmt: skip


def _plan_json(out: str) -> None:
    assert set(json.loads(out)) >= PLAN_KEYS


def _docker_run(out: str) -> None:
    assert out.startswith("docker run ") and "harness.run_id" in out, out


def _compose(out: str) -> None:
    assert out.startswith("services:") or "\nservices:" in out, out


#: What an example's own section says it prints, checked on its output.
PROMISES: dict[str, Callable[[str], None]] = {
    "harness plan --engine vllm --model ./tiny --tp 2 --profile debug --runtime docker "
    "--format json": _plan_json,
    "harness plan --model ./tiny --runtime docker --format docker": _docker_run,
    "harness plan --model ./tiny --runtime docker --format compose": _compose,
}


_FENCE = re.compile(r"^\s*(```|~~~)")
_COMMENT = re.compile(r"\s+#(\s.*)?$")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_SYNOPSIS = re.compile(r"[\[\]()|]|\.\.\.")
_RUN_ID = re.compile(r"^(RUN_ID|<run-id>|\d{8}-\d{6}-[\w.-]+)$")
_INCIDENT = re.compile(r"^runs/(RUN_ID|<run-id>)/incidents/\d+$")
_MODEL_PATH = re.compile(r"^(\.{1,2}/|/|\.cache/)|^M$")
#: Commands that start servers from plan options (rule 2) and bind ports (rule 4).
SERVING = {"serve", "repro-startup", "soak", "compare", "replay"}


@dataclass(frozen=True)
class Example:
    """One example command as the docs write it, and where."""

    text: str
    places: tuple[str, ...]
    synopsis: bool

    @property
    def commands(self) -> list[list[str]]:
        """Its commands (``&&`` and, in a synopsis, ``| harness`` separate them), as words."""
        parts = re.split(r"\s+&&\s+|\s+\|\s+(?=harness\s)", self.text)
        return [shlex.split(part) for part in parts]

    def __str__(self) -> str:
        return self.places[0]


def _blocks(path: Path) -> Iterator[list[tuple[int, str]]]:
    """The fenced code blocks of ``path``: their lines with their numbers."""
    block: list[tuple[int, str]] | None = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if _FENCE.match(line):
            if block is not None:
                yield block
            block = None if block is not None else []
        elif block is not None:
            block.append((number, line))


def _commands_of(block: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """(line number, text) of every example in a block (see the module's docstring)."""
    current: list[str] = []
    start = 0
    lines = iter(block)
    for number, line in lines:
        stripped = " ".join(_COMMENT.sub("", line).split())
        if stripped.startswith(("harness ", "make ")):
            if current:
                yield start, " ".join(current)
            start, current = number, [stripped.removesuffix("\\").strip()]
            while line.rstrip().endswith("\\"):
                number, line = next(lines, (number, ""))
                current.append(" ".join(_COMMENT.sub("", line).split()).removesuffix("\\").strip())
        elif current and line[:1].isspace() and stripped and _is_synopsis(" ".join(current)):
            current.append(stripped)  # an indented line continues a synopsis
        elif current:
            yield start, " ".join(current)
            current = []
    if current:
        yield start, " ".join(current)


def _is_synopsis(text: str) -> bool:
    return bool(_SYNOPSIS.search(_QUOTED.sub("", text)))


def extract(paths: list[Path]) -> list[Example]:
    """Every example of ``paths`` (see the module's docstring), each text once."""
    found: dict[str, list[str]] = {}
    for path in paths:
        for block in _blocks(path):
            for number, text in _commands_of(block):
                found.setdefault(text, []).append(f"{path.relative_to(REPO)}:{number}")
    return [Example(text, tuple(places), _is_synopsis(text)) for text, places in found.items()]


EXAMPLES = extract(DOCS)


# ---------------------------------------------------------------------------------- parsing


def _scratch_cwd(root: Path) -> Path:
    """A directory holding the relative files the examples name."""
    cwd = root / "cwd"
    cwd.mkdir(exist_ok=True)
    shutil.copy(REPO / "tests" / "fixtures" / "my-hangs.yaml", cwd / "my-hangs.yaml")
    shutil.copy(REPO / "tests" / "fixtures" / "train.py", cwd / "train.py")
    return cwd


@pytest.fixture(scope="module")
def parse_results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], str | None]:
    """Every harness command of every example checked by clickparse, in one process."""
    tasks = [
        (e, n, argv)
        for e in EXAMPLES
        for n, argv in enumerate(e.commands)
        if argv and argv[0] == "harness"
    ]
    payload = [{"argv": argv[1:], "synopsis": e.synopsis} for e, _, argv in tasks]
    cwd = _scratch_cwd(tmp_path_factory.mktemp("parse"))
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.clickparse"],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "HARNESS_RUNS_DIR": str(cwd / "runs")},
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    return {(e.text, n): answer for (e, n, _), answer in zip(tasks, answers, strict=True)}


def _make_plans(argv: list[str]) -> tuple[int, str]:
    done = subprocess.run(
        ["make", "-n", *argv[1:], f"PORT={free_port()}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    return done.returncode, (done.stdout + done.stderr).replace("\\\n", " ")


@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_every_example_parses(
    example: Example, parse_results: dict[tuple[str, int], str | None], tmp_path: Path
) -> None:
    for n, argv in enumerate(example.commands):
        if argv[0] == "harness":
            problem = parse_results[(example.text, n)]
            assert problem is None, f"{example.places}: {example.text}\n{problem}"
            continue
        assert argv[0] == "make"
        code, printed = _make_plans(argv)
        assert code == 0, f"{example.places}: make -n {argv[1:]}\n{printed}"
        recipes = [shlex.split(line) for line in printed.splitlines() if "bin/harness " in line]
        for recipe in recipes:
            start_at = next(i for i, w in enumerate(recipe) if w.endswith("bin/harness"))
            root = recipe[start_at + 1 :]
            task = json.dumps([{"argv": root, "synopsis": False}])
            checked = subprocess.run(
                [sys.executable, "-m", "tests.integration.clickparse"],
                input=task, capture_output=True, text=True, timeout=120,
                cwd=_scratch_cwd(tmp_path), env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip
            assert checked.returncode == 0, checked.stderr
            assert json.loads(checked.stdout) == [None], (example.places, recipe, checked.stdout)


def test_the_lists_name_examples_of_the_docs() -> None:
    """No entry outlives its example (a stale reason would hide a new example's)."""
    texts = {e.text for e in EXAMPLES}
    synopses = {e.text for e in EXAMPLES if e.synopsis}
    for listed in (NOT_RUN, REAL_ENGINE, EXIT_CODES, PROMISES):
        stale = set(listed) - texts
        assert not stale, f"not an example of README.md or docs/*.md any more: {stale}"
        assert not set(listed) & synopses, "a synopsis is never run"
    assert not set(NOT_RUN) & (REAL_ENGINE | set(EXIT_CODES) | set(PROMISES))


# ---------------------------------------------------------------------------------- running


class Prepared:
    """What the rewrite rules point examples at, made on first use and stopped at the end of
    the module: the tiny model, a simulator, a detached simulated server with records, a stall
    incident, a sleeping Python process, the signature file."""

    def __init__(self, root: Path, request: pytest.FixtureRequest, stack: ExitStack) -> None:
        self.root = root
        self.runs = root / "runs"
        self._request = request
        self._stack = stack
        self.cwd = _scratch_cwd(root)

    @cached_property
    def tiny_model(self) -> Path:
        return Path(self._request.getfixturevalue("tiny_model_dir"))

    @cached_property
    def sim_url(self) -> str:
        url, _ = self._stack.enter_context(sim_server(outlives_test=True))
        return str(url)

    @cached_property
    def served_run(self) -> Path:
        """A detached simulated server (watched), four requests recorded in its run."""
        served = run(self.runs, "serve", "--engine", "sim", "--model", "sim", "--port",
                     str(free_port()), "--detach", timeout=120)  # fmt: skip
        assert served.returncode == 0, served.stderr
        run_dir = only_dir(self.runs)
        load = run(self.runs, "load", "--run", run_dir.name, "-n", "4", "-c", "2",
                   "--no-progress", timeout=120)  # fmt: skip
        assert load.returncode == 0, load.stderr
        return run_dir

    def port(self) -> str:
        return str(free_port())

    def server_to_stop(self) -> Path:
        """A detached simulated server of its own, for an example that stops it."""
        runs = self.root / "to-stop"
        before = set(runs.iterdir()) if runs.exists() else set()
        served = run(runs, "serve", "--engine", "sim", "--model", "sim", "--port",
                     str(free_port()), "--detach", timeout=120)  # fmt: skip
        assert served.returncode == 0, served.stderr
        (run_dir,) = set(runs.iterdir()) - before
        return run_dir

    @cached_property
    def incident(self) -> Path:
        """A stall incident of the simulator with two requests of harness load in flight; its
        plan injects the same stall (so a replay from it brings the hang back)."""
        runs = self.root / "incident-runs"
        port = free_port()
        serve = start(runs, "serve", "--engine", "sim", "--model", "sim", "--fault",
                      "stall:p=1,after=0", "--stall-after", "3", "--on-hang", "stop",
                      "--port", str(port))  # fmt: skip
        spec = wait_for(
            lambda: next(runs.glob("*/launch_spec.json"), None), 60, "a plan", procs=[serve]
        )
        wait_healthy(f"http://127.0.0.1:{port}/health", 60, proc=serve)
        load = start(runs, "load", "--run", spec.parent.name, "--no-progress", "-c", "2",
                     "-n", "2", "--max-tokens", "20", "--stall-after", "60")  # fmt: skip
        assert finish(serve, 120).returncode == 1  # the hang was found, the server stopped
        finish(load, 120)
        (incident,) = spec.parent.glob("incidents/*/")
        return Path(incident)

    @cached_property
    def signatures(self) -> Path:
        return self.cwd / "my-hangs.yaml"

    @cached_property
    def sleeper_pid(self) -> int:
        code = "import time\nprint('ready', flush=True)\ntime.sleep(900)\n"
        proc = spawn([sys.executable, "-c", code], stderr=None, outlives_test=True)
        self._stack.callback(stop, proc)
        assert first_line(proc) == "ready"
        return proc.pid


@pytest.fixture(scope="module")
def prepared(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Prepared]:
    root = tmp_path_factory.mktemp("docs")
    with ExitStack() as stack:
        try:
            yield Prepared(root, request, stack)
        finally:
            stop_all_under(root)


def _replace_value(words: list[str], options: tuple[str, ...], value: Any) -> None:
    for i, word in enumerate(words[:-1]):
        if word in options:
            words[i + 1] = str(value(words[i + 1]) if callable(value) else value)


def _set_option(words: list[str], option: str, value: str) -> None:
    if option in words:
        words[words.index(option) + 1] = value
    else:
        words += [option, value]


def rewrite(
    argv: list[str], example: Example, p: Prepared, tmp: Path
) -> tuple[list[str], dict[str, str]]:
    """The command line to run for ``argv`` of ``example`` (rules 2-6 of the docstring) and the
    variables to add."""
    words = list(argv[1:])
    env: dict[str, str] = {}
    if argv[0] == "make":
        return argv, env
    command = words[0]
    head, sep, job = (words, [], []) if "--" not in words else (
        words[: words.index("--")], ["--"], words[words.index("--") + 1 :]
    )  # fmt: skip
    # 2. model
    real = example.text in REAL_ENGINE
    for i in range(len(head) - 1):
        if head[i] == "--model" and _MODEL_PATH.search(head[i + 1]):
            head[i + 1] = str(p.tiny_model)
    if command in ("fetch", "shard") and len(head) > 1 and _MODEL_PATH.search(head[1]):
        head[1] = str(p.tiny_model)
    if command in SERVING and "--model" in head and not real:
        for option in ("--engine", "--model"):
            if option in head:
                del head[head.index(option) : head.index(option) + 2]
        head[1:1] = ["--engine", "sim", "--model", "sim"]
    # 3. runs named (``harness down`` stops the server: it gets one of its own)
    for i, word in enumerate(head):
        if _INCIDENT.match(word):
            head[i] = str(p.incident)
        elif _RUN_ID.match(word):
            head[i] = str(p.server_to_stop() if command == "down" else p.served_run)
    # 4. servers and ports
    _replace_value(head, ("--url", "--base-url"), lambda _: p.sim_url)
    if command == "sim" or (command in SERVING and (command != "replay" or "--model" in head)):
        _set_option(head, "--port", p.port())
    if command == "down" and "--all" in head:
        env["DOCKER_HOST"] = f"unix://{tmp}/no-docker.sock"
    # 5. durations and counts
    _replace_value(head, ("--duration",), "4")
    _replace_value(head, ("--ramp",), "2")
    _replace_value(head, ("--runs",), "2")
    _replace_value(head, ("--requests", "-n", "--num-prompts"), lambda v: min(int(v), 20))
    _replace_value(head, ("--times", "--repeats"), "1")
    # 6. files and processes
    _replace_value(head, ("--signatures",), p.signatures)
    _replace_value(head, ("--heartbeat",), tmp / "hb")
    _replace_value(head, ("--dest",), tmp / "dest")
    _replace_value(head, ("--pid",), lambda _: p.sleeper_pid)
    bin_dir = Path(sys.executable).parent
    job = [
        str(bin_dir / w) if w in ("python", "torchrun") and (bin_dir / w).exists()
        else str(p.cwd / w) if w == "train.py" else w
        for w in job
    ]  # fmt: skip
    return [*harness_argv(None, *head, *sep, *job)], env


def _foreground(cmd: list[str]) -> bool:
    """Whether ``cmd`` (``python -m harness ...``) serves in the foreground until stopped."""
    words = cmd[3:] if cmd[0] == sys.executable else []
    return bool(words) and (words[0] == "sim" or (words[0] == "serve" and "--detach" not in words))


def _ready(cmd: list[str], runs: Path) -> bool:
    """Whether the foreground server of ``cmd`` is healthy."""
    words = cmd[3:]
    if words[0] == "sim":
        port = words[words.index("--port") + 1]
        return answers(f"http://127.0.0.1:{port}/health")
    states = list(runs.glob("*/state.json"))
    return len(states) == 1 and read_json(states[0]).get("status") == "healthy"


class _Placeholders:
    """What :func:`rewrite` would point an example at, as names: two examples that read the
    same once rewritten run the same commands."""

    tiny_model = sim_url = served_run = incident = signatures = sleeper_pid = Path("<prepared>")
    cwd = Path("<cwd>")

    def port(self) -> str:
        return "<port>"

    def server_to_stop(self) -> Path:
        return Path("<to-stop>")


def _runnable() -> list[Example]:
    """Examples that run: not synopses, not in NOT_RUN, and not the same as an earlier one once
    rewritten (``./tiny`` and ``./tiny-model`` are both the simulator there: it runs once)."""
    seen: set[str] = set()
    out = []
    for e in EXAMPLES:
        if e.synopsis or e.text in NOT_RUN:
            continue
        fake = _Placeholders()
        rewritten = repr([rewrite(c, e, fake, Path("<tmp>")) for c in e.commands])  # type: ignore[arg-type]
        if rewritten not in seen:
            seen.add(rewritten)
            out.append(e)
    return out


RUNNABLE = _runnable()


@pytest.mark.parametrize("example", RUNNABLE, ids=str)
def test_example_runs(example: Example, prepared: Prepared, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    real = example.text in REAL_ENGINE
    if real:
        require(have_module("vllm"), "vLLM's CPU build (make install)")
    if "torch.distributed.run" in example.text or "torchrun" in example.text:
        require(have_module("torch"), "torch")
    codes, _ = EXIT_CODES.get(example.text, ({0}, ""))
    timeout = 900.0 if real else 240.0
    try:
        for argv in example.commands:
            cmd, env = rewrite(argv, example, prepared, tmp_path)
            env["HARNESS_RUNS_DIR"] = str(runs)
            proc = spawn(cmd, env=env, cwd=REPO if cmd[0] == "make" else prepared.cwd)
            if _foreground(cmd):
                wait_for(lambda c=cmd: _ready(c, runs), timeout, f"{example}: healthy",
                         procs=[proc])  # fmt: skip
                proc.send_signal(signal.SIGINT)
                done = finish(proc, 120)
                expected = CTRL_C_EXIT
            else:
                done = finish(proc, timeout)
                expected = codes
            said = done.stdout + done.stderr
            assert done.returncode in expected, f"{example.places}: {shlex.join(cmd)}\n{said}"
            assert "Traceback" not in said, said
            if example.text in PROMISES and len(example.commands) == 1:
                PROMISES[example.text](done.stdout)
    finally:
        left = stop_all_under(runs) if runs.exists() else []
    assert left == [], f"{example}: servers left running: {left}"

"""docs/architecture.md (the contract's home in the repository) agrees with the code where that
is cheap to check: the commands it lists exist, the plan JSON has its keys, and the layers only
import downwards."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import _COMMANDS

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "architecture.md").read_text()
PACKAGE = REPO / "harness"

#: Commands the contract names that later issues deliver (issue number); the test fails once one
#: exists, so the list can only shrink.
PENDING: dict[str, int] = {}


def test_every_command_of_the_contract_exists() -> None:
    block = DOC.split("## Command line (contract)", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"^harness ([a-z-]+)", block, flags=re.M))
    named |= set(re.findall(r"\| harness ([a-z-]+)", block))
    registered = {name for name, _module, _attr in _COMMANDS}
    assert named - registered == set(PENDING), "a contract command is missing from the CLI"
    assert not set(PENDING) & registered, "a pending command exists now: drop it from PENDING"


def test_the_plan_json_has_every_contract_key(tmp_path: Path) -> None:
    block = DOC.split("## `harness plan --format json` (contract)", 1)[1].split("```", 2)[1]
    keys = set(re.findall(r'"([a-z_]+)":', block.split('"container"')[0]))
    container = block.split('"container": {', 1)[1]
    # Keep the container mapping's own keys: drop nested {...} (ulimits, volumes) first.
    container = re.sub(r"\{[^{}]*\}", "{}", container).split("}", 1)[0]
    container_keys = set(re.findall(r'"([a-z_]+)":', container))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "--runs-dir",
            str(tmp_path),
            "plan",
            "--engine",
            "sim",
            "--model",
            "sim",
            "--tp",
            "2",
            "--runtime",
            "docker",
            "--image",
            "example:1",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    plan = json.loads(out)
    assert keys <= set(plan), keys - set(plan)
    assert container_keys <= set(plan["container"]), container_keys - set(plan["container"])


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _modules() -> dict[str, set[str]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = _imports(path)
    return out


MODULES = _modules()

#: package -> packages it must never import (the layers point down).
FORBIDDEN = {
    "harness.engines": (
        "harness.runtime",
        "harness.watchdog",
        "harness.load",
        "harness.campaign",
        "harness.cli",
        "harness.report",
    ),
    "harness.runtime": (
        "harness.watchdog",
        "harness.load",
        "harness.campaign",
        "harness.cli",
        "harness.report",
    ),
    "harness.watchdog": ("harness.campaign", "harness.cli", "harness.load.runner"),
    "harness.load": (
        "harness.campaign",
        "harness.cli",
        "harness.watchdog.capture",
        "harness.runtime",
    ),
    "harness.report": (
        "harness.campaign",
        "harness.cli",
        "harness.runtime",
        "harness.watchdog",
        "harness.load.runner",
        "harness.load.client",
    ),
    "harness.campaign": ("harness.cli",),
    "harness.sim": ("harness.campaign", "harness.cli", "harness.runtime", "harness.watchdog"),
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_only_import_downwards(package: str) -> None:
    bad = []
    for module, imports in MODULES.items():
        if module != package and not module.startswith(package + "."):
            continue
        for imported in imports:
            if any(imported == f or imported.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{module} imports {imported}")
    assert not bad, bad


def test_only_the_docker_runtime_imports_docker() -> None:
    users = sorted(
        m
        for m, imports in MODULES.items()
        if any(i == "docker" or i.startswith("docker.") for i in imports)
    )
    assert users == ["harness.runtime.docker"]


def _signals_groups(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "killpg":
            return True
        if isinstance(node, ast.Name) and node.id == "killpg":
            return True
        if isinstance(node, ast.ImportFrom) and any(a.name == "killpg" for a in node.names):
            return True
    return False


def test_only_procgroup_signals_process_groups() -> None:
    users = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts)
        for path in PACKAGE.rglob("*.py")
        if _signals_groups(path)
    )
    assert users == ["harness.procgroup"], "stop process groups through harness.procgroup"


_RUNNERS = {"which", "run", "Popen", "call", "check_call", "check_output", "run_with_deadline"}


def _runs_the_docker_cli(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.List | ast.Tuple) and node.elts:
            first = node.elts[0]
            if isinstance(first, ast.Constant) and first.value == "docker":
                return True
        if isinstance(node, ast.Call) and node.args:
            name = node.func.attr if isinstance(node.func, ast.Attribute) else None
            name = node.func.id if isinstance(node.func, ast.Name) else name
            first = node.args[0]
            if name in _RUNNERS and isinstance(first, ast.Constant) and first.value == "docker":
                return True
    return False


def test_the_watchdog_reaches_containers_through_the_runtime_not_the_docker_cli() -> None:
    users = sorted(
        str(path.relative_to(REPO))
        for path in (PACKAGE / "watchdog").rglob("*.py")
        if _runs_the_docker_cli(path)
    )
    assert users == [], "use the Docker runtime's handle (exec_in_container) or container_access"

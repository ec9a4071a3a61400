#!/usr/bin/env bash
# Give the tests a real Docker engine and the vLLM CPU image (called by .ci/run before `make test`).
# Idempotent: every step is skipped when its result is already there. Prints TIMING lines.
#
#   1. Debian packages docker.io, debootstrap, docker-compose, gdb (apt-get; skipped when present)
#   2. dockerd running                                           (started in the background)
#   3. base image harness-base:bookworm                          (debootstrap + docker import)
#      (python3, venv, pip, CA certificates, procps, libnuma1 for vLLM's CPU kernels,
#      libtcmalloc-minimal4 that the image preloads)
#   4. harness-vllm-cpu:<version>                                (scripts/build-images.sh with its
#      defaults, exactly what `make images` runs: the wheelhouse .cache/wheelhouse filled with the
#      host's pip, the CA bundle the host's pip trusts when the base image lacks one of its CAs;
#      the build itself is offline)
#
# Environment: HARNESS_BASE_IMAGE, DEBIAN_SUITE (bookworm), DEBIAN_MIRROR, DOCKERD_TIMEOUT (60),
# and scripts/build-images.sh's (HARNESS_WHEELHOUSE, HARNESS_EXTRA_CA, ...).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BASE_IMAGE=${HARNESS_BASE_IMAGE:-harness-base:bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKERD_TIMEOUT=${DOCKERD_TIMEOUT:-60}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/harness-dockerd.log}

now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f s", b-a}'; }
T0=$(now)
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# 1. packages
t=$(now)
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v docker-compose >/dev/null || missing+=(docker-compose)
# gdb's gcore: core files in incident bundles (`harness dump --core`); installed here, with the
# rest, so that two apt-get runs never contend for the dpkg lock.
command -v gcore >/dev/null || missing+=(gdb)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  $SUDO timeout 300 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO timeout 600 apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
echo "TIMING packages $(took "$t")"

# 2. dockerd
t=$(now)
if ! timeout 20 docker info >/dev/null 2>&1; then
  echo "starting dockerd (log: $DOCKERD_LOG)"
  $SUDO sh -c "nohup dockerd >>'$DOCKERD_LOG' 2>&1 &"
  deadline=$(( $(date +%s) + DOCKERD_TIMEOUT ))
  until timeout 10 docker info >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "dockerd not ready after ${DOCKERD_TIMEOUT}s; last log lines:" >&2
      tail -n 20 "$DOCKERD_LOG" >&2 || true
      exit 3
    fi
    sleep 0.5
  done
fi
echo "TIMING dockerd $(took "$t")"

# 3. base image: a minimal Debian with python3, debootstrapped and imported (no registry needed)
t=$(now)
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  root=$(mktemp -d "${TMPDIR:-/tmp}/harness-rootfs.XXXXXX")
  trap '$SUDO rm -rf "$root"' EXIT
  echo "debootstrap $SUITE into $root"
  $SUDO timeout 900 debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,procps,libnuma1,libtcmalloc-minimal4 "$SUITE" "$root" "$MIRROR" \
    >"$root.log" 2>&1 || { tail -n 20 "$root.log" >&2; exit 3; }
  $SUDO rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root.log"
  $SUDO tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' \
    - "$BASE_IMAGE" >/dev/null
  $SUDO rm -rf "$root"
  trap - EXIT
fi
echo "TIMING base-image $(took "$t")"

# 4. the vLLM CPU image (the default image for vllm on a CPU host)
t=$(now)
# No options: `make images` must find what CI built up to date (same inputs, same hash).
"$REPO/scripts/build-images.sh" vllm-cpu
echo "TIMING vllm-cpu-image $(took "$t")"
echo "TIMING docker-setup total $(took "$T0")"

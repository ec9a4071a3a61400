#!/usr/bin/env bash
# A test cluster on one machine: N "nodes" (containers of the vLLM CPU image, each with its own
# IP, hostname and sshd) on a user-defined Docker bridge network marked --internal (no route
# out: traffic goes only between the nodes and this host). For the tests and CI of multi-node
# serving (`harness serve --nodes`), `harness doctor --node-hosts` and `harness dump --hosts`
# over real ssh and pdsh.
#
#   scripts/testcluster.sh up [--nodes N] [--name NAME] [--dir DIR] [--share PATH[:ro]]...
#                             [--image IMAGE] [--no-pin] [--extra-nic NODE]...
#   scripts/testcluster.sh down [--name NAME] [--dir DIR]
#   scripts/testcluster.sh status [--name NAME]
#   scripts/testcluster.sh env [--name NAME] [--dir DIR]   # the export line for ssh/pdsh
#   scripts/testcluster.sh check                          # pdsh installed, image has sshd
#
# `up` makes a key per cluster (DIR/id_ed25519), starts node1..nodeN (hostnames node1..N,
# container names NAME-node1..N, network aliases node1..N), writes DIR/ssh_config (each node's
# address, the key, a known_hosts file of the cluster) and DIR/bin/ssh, a wrapper running
# `ssh -F DIR/ssh_config`: put DIR/bin first on PATH and `ssh node1`, pdsh and harness reach
# the nodes (`eval "$(scripts/testcluster.sh env)"`). Each node gets one core of this host
# (--cpuset-cpus; --no-pin leaves them all), 1 GiB of /dev/shm, CAP_SYS_PTRACE (py-spy) and
# the image's environment in its ssh sessions (PATH with the engine's venv, LD_PRELOAD).
# --share mounts a host directory at the same path on every node (a shared filesystem: the
# model, the runs directory). --extra-nic node2 gives node2 a second interface (eth1) on a
# second internal network no other node is on: a multi-homed node whose wrong NIC the
# collectives can pick. Everything is labelled harness.testcluster=NAME; `down` removes
# the containers, the network and DIR, and `up` removes a previous cluster of that name first
# (and everything it made when it fails half-way).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NAME=harness-tc
NODES=2
IMAGE=harness-vllm-cpu:0.32.0
DIR=""
PIN=1
SHARES=()
EXTRA_NIC=()
LABEL=harness.testcluster
UP_TIMEOUT_S=${TESTCLUSTER_UP_TIMEOUT:-60}

usage() {
  sed -n '8,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --name) NAME=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --share) SHARES+=("$2"); shift 2 ;;
    --image) IMAGE=$2; shift 2 ;;
    --no-pin) PIN=0; shift ;;
    --extra-nic) EXTRA_NIC+=("$2"); shift 2 ;;
    -h|--help) usage ;;
    *) echo "testcluster: unknown option $1" >&2; usage ;;
  esac
done
case "$NODES" in ''|*[!0-9]*|0) echo "testcluster: --nodes must be a positive number" >&2; exit 2 ;; esac
[[ "$NAME" =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ ]] || { echo "testcluster: bad --name $NAME" >&2; exit 2; }
DIR=${DIR:-$REPO/.cache/testcluster/$NAME}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

install_pdsh() {
  command -v pdsh >/dev/null && return
  $SUDO timeout 300 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO timeout 300 apt-get install -y -qq \
    --no-install-recommends pdsh >/dev/null
}

check_image() {
  docker image inspect "$IMAGE" >/dev/null 2>&1 \
    || { echo "testcluster: image $IMAGE is missing: make images" >&2; exit 3; }
  docker run --rm --network none --entrypoint sh "$IMAGE" -c 'command -v sshd >/dev/null' \
    || { echo "testcluster: $IMAGE has no sshd (an offline build skips APT_NODE): rebuild it with a Debian mirror reachable (make images)" >&2; exit 3; }
}

down() {
  local ids
  ids=$(docker ps -aq --filter "label=$LABEL=$NAME")
  # shellcheck disable=SC2086
  [ -z "$ids" ] || docker rm -f -v $ids >/dev/null
  ids=$(docker network ls -q --filter "label=$LABEL=$NAME")
  # shellcheck disable=SC2086
  [ -z "$ids" ] || docker network rm $ids >/dev/null
  # Only a directory this script made (it holds the key) is removed.
  if [ -f "$DIR/id_ed25519" ] && [ -f "$DIR/ssh_config" ]; then rm -rf "$DIR"; fi
}

env_line() {
  echo "export PATH=$DIR/bin:\$PATH HARNESS_TESTCLUSTER_NODES=$(seq -s, -f 'node%g' 1 "$NODES")"
}

up() {
  command -v docker >/dev/null || { echo "testcluster: docker is not installed" >&2; exit 3; }
  check_image
  down
  trap 'down' ERR
  mkdir -p "$DIR/bin"
  ssh-keygen -q -t ed25519 -N '' -C "harness-testcluster-$NAME" -f "$DIR/id_ed25519"
  : > "$DIR/known_hosts"
  # The extra network first: Docker gives it the lower subnet, so a rank announcing its address
  # there is the side Gloo's pair setup connects to (the higher address connects), and the
  # connection never completes: the startup hangs instead of failing fast.
  if [ ${#EXTRA_NIC[@]} -gt 0 ]; then
    docker network create --internal --label "$LABEL=$NAME" "$NAME-extra" >/dev/null
  fi
  docker network create --internal --label "$LABEL=$NAME" "$NAME" >/dev/null
  local cpus i pin ip mounts=() share
  cpus=$(nproc)
  for share in "${SHARES[@]}"; do
    case "$share" in
      *:ro) mounts+=(--volume "${share%:ro}:${share%:ro}:ro") ;;
      *) mounts+=(--volume "$share:$share") ;;
    esac
  done
  # sshd gives sessions its own default PATH: the image's PATH (the engine's venv, py-spy) and
  # LD_PRELOAD (tcmalloc, OpenMP) are set for every session with SetEnv.
  local boot='ssh-keygen -A -q && mkdir -p /run/sshd /root/.ssh && chmod 700 /root/.ssh \
    && cp /etc/harness-testcluster.pub /root/.ssh/authorized_keys \
    && printf "SetEnv PATH=%s LD_PRELOAD=%s VIRTUAL_ENV=%s PYTHONUNBUFFERED=1 LANG=C.UTF-8\n" \
       "$PATH" "${LD_PRELOAD:-}" "${VIRTUAL_ENV:-}" > /etc/ssh/sshd_config.d/harness.conf \
    && exec /usr/sbin/sshd -D -e -o PasswordAuthentication=no -o PermitRootLogin=prohibit-password'
  for i in $(seq 1 "$NODES"); do
    pin=()
    if [ "$PIN" = 1 ] && [ "$cpus" -ge "$NODES" ]; then pin=(--cpuset-cpus "$((i - 1))"); fi
    docker run -d --name "$NAME-node$i" --hostname "node$i" \
      --network "$NAME" --network-alias "node$i" \
      --label "$LABEL=$NAME" --label "$LABEL.node=node$i" \
      --cap-add SYS_PTRACE --shm-size 1g --init "${pin[@]}" "${mounts[@]}" \
      --volume "$DIR/id_ed25519.pub:/etc/harness-testcluster.pub:ro" \
      --entrypoint sh "$IMAGE" -c "$boot" >/dev/null
  done
  for node in "${EXTRA_NIC[@]}"; do
    docker network connect "$NAME-extra" "$NAME-$node"
  done
  {
    for i in $(seq 1 "$NODES"); do
      ip=$(docker inspect -f "{{ (index .NetworkSettings.Networks \"$NAME\").IPAddress }}" "$NAME-node$i")
      printf 'Host node%s %s\n  HostName %s\n' "$i" "$ip" "$ip"
      echo "node$i $ip" >> "$DIR/nodes"
    done
    printf 'Host *\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n' "$DIR/id_ed25519"
    printf '  UserKnownHostsFile %s\n  StrictHostKeyChecking accept-new\n' "$DIR/known_hosts"
    printf '  BatchMode yes\n  ConnectTimeout 5\n  LogLevel ERROR\n'
  } > "$DIR/ssh_config"
  printf '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' "$DIR/ssh_config" > "$DIR/bin/ssh"
  chmod +x "$DIR/bin/ssh"
  local deadline=$((SECONDS + UP_TIMEOUT_S))
  for i in $(seq 1 "$NODES"); do
    until "$DIR/bin/ssh" "node$i" true 2>/dev/null; do
      if [ $SECONDS -ge $deadline ]; then
        echo "testcluster: node$i does not answer ssh after ${UP_TIMEOUT_S} s:" >&2
        docker logs --tail 20 "$NAME-node$i" >&2 || true
        down
        exit 3
      fi
      sleep 0.5
    done
  done
  trap - ERR
  env_line > "$DIR/env"
  echo "cluster $NAME: $NODES node(s) on internal network $NAME; ssh config $DIR/ssh_config"
  cat "$DIR/nodes"
  cat "$DIR/env"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  status)
    docker ps -a --filter "label=$LABEL=$NAME" --format '{{.Names}}\t{{.Status}}'
    docker network ls --filter "label=$LABEL=$NAME" --format '{{.Name}} (network)'
    ;;
  env)
    [ -f "$DIR/env" ] || { echo "testcluster: no cluster $NAME in $DIR (up first)" >&2; exit 3; }
    cat "$DIR/env"
    ;;
  check)
    install_pdsh
    check_image
    echo "testcluster: pdsh $(command -v pdsh), image $IMAGE has sshd"
    ;;
  *) usage ;;
esac

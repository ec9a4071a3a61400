#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (Debian's slurm-wlm + munge), for the tests and
# CI of `harness dump --slurm-job` and campaigns with --slurm.
#
#   scripts/slurm.sh up       install if missing, write the config, start munged, slurmctld, slurmd
#   scripts/slurm.sh down     stop the daemons (the config stays)
#   scripts/slurm.sh status   sinfo
#
# The config is /etc/slurm/slurm.conf, written only when absent or written by this script before
# (marked on its first line). One node: this host, all its cores, one partition "debug".
set -euo pipefail
CONF=/etc/slurm/slurm.conf
MARK="# written by harness scripts/slurm.sh"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

install() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v munged >/dev/null || missing+=(munge)
  if [ ${#missing[@]} -gt 0 ]; then
    $SUDO timeout 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO timeout 600 apt-get install -y -qq \
      --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

write_config() {
  if [ -f "$CONF" ] && ! head -n 1 "$CONF" | grep -qF "$MARK"; then
    echo "keeping the existing $CONF (not written by this script)"
    return
  fi
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
  $SUDO mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  $SUDO tee "$CONF" >/dev/null <<CONF
$MARK
ClusterName=harness
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    $SUDO mkdir -p /etc/munge
    $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    $SUDO chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    $SUDO chmod 0400 /etc/munge/munge.key
  fi
  $SUDO mkdir -p /run/munge
  $SUDO chown munge:munge /run/munge 2>/dev/null || true
  if ! pgrep -x munged >/dev/null; then
    $SUDO -u munge munged 2>/dev/null || $SUDO munged --force
  fi
}

wait_idle() {
  local deadline=$((SECONDS + 60))
  until sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; do
    if [ $SECONDS -ge $deadline ]; then
      echo "slurm: the node is not up after 60 s:" >&2
      sinfo >&2 || true
      tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
      exit 3
    fi
    # A node left DOWN by an earlier stop comes back by itself (ReturnToService=2) or here.
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
}

case "${1:-}" in
  up)
    install
    write_config
    start_munge
    pgrep -x slurmctld >/dev/null || $SUDO slurmctld
    pgrep -x slurmd >/dev/null || $SUDO slurmd
    wait_idle
    sinfo
    ;;
  down)
    $SUDO pkill -x slurmd || true
    $SUDO pkill -x slurmctld || true
    ;;
  status)
    sinfo
    ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac

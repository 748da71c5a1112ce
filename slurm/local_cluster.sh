#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests and for trying the sbatch scripts:
#   bash slurm/local_cluster.sh start     # installs slurm-wlm + munge if missing (Debian, as root), starts it
#   bash slurm/local_cluster.sh stop      # stops only the daemons `start` started (by their pid files)
# slurmctld and slurmd run as root on localhost, with this machine's CPUs and memory, one partition "local".
# Daemons already running (a cluster of your own, munged of the system) are used as they are and never stopped.
set -euo pipefail

CONF_DIR=/etc/slurm
STATE=/var/spool/slurm-selfsup
LOGS=/var/log/slurm-selfsup
STARTED=$STATE/started      # one line per daemon this script started: name and pid file
MUNGE_PID=/run/munge/munged.pid

install_if_missing() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
}

write_config() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOGS"
  cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=selfsup-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
SchedulerType=sched/backfill
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
}

alive() {  # alive PIDFILE: the process of that pid file runs
  [ -s "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null
}

launch() {  # launch NAME PIDFILE COMMAND...: start a daemon unless one of that name runs; record what we started
  local name=$1 pidfile=$2
  shift 2
  if alive "$pidfile" || pgrep -x "$name" >/dev/null; then
    return 0
  fi
  "$@"
  for _ in $(seq 50); do alive "$pidfile" && break; sleep 0.1; done
  alive "$pidfile" || { echo "error: $name did not start; see $LOGS/" >&2; exit 1; }
  echo "$name $pidfile" >> "$STARTED"
}

start() {
  [ "$(id -u)" = 0 ] || { echo "error: run as root (slurmctld and slurmd run as root here)" >&2; exit 1; }
  install_if_missing
  write_config
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
  launch munged "$MUNGE_PID" sh -c 'runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force'
  launch slurmctld "$STATE/slurmctld.pid" slurmctld -i
  launch slurmd "$STATE/slurmd.pid" slurmd
  for _ in $(seq 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      sinfo
      return 0
    fi
    sleep 1
  done
  echo "error: SLURM did not come up; see $LOGS/" >&2
  tail -n 20 "$LOGS"/*.log >&2 || true
  exit 1
}

stop() {
  [ -s "$STARTED" ] || return 0
  if grep -q '^slurmctld ' "$STARTED"; then
    scancel --full --quiet --user=root 2>/dev/null || true
  fi
  # the last started first: slurmd, slurmctld, then munged
  tac "$STARTED" | while read -r name pidfile; do
    if alive "$pidfile"; then
      kill "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null || true
      for _ in $(seq 40); do alive "$pidfile" || break; sleep 0.25; done
    fi
  done
  rm -f "$STARTED"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

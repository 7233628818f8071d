#!/usr/bin/env bash
# A one-machine SLURM cluster for tests: munge + slurmctld + slurmd on this host (Debian's slurm-wlm).
# Usage: bash tests/slurm/cluster.sh start|stop|status        (needs root; installs nothing)
#
# Everything it runs is its own, so it is safe on a machine that is itself a SLURM node: config, state,
# logs, pid files and a private munge (key, socket, pid, seed, log) live under $GENLIP_SLURM_DIR (default
# /tmp/genlip-slurm); the daemons listen on non-default ports ($GENLIP_SLURM_PORT and the next one, default
# 16817/16818, not SLURM's 6817/6818) and `start` refuses when anything else listens there; `stop` ends
# only the processes named in its pid files (checked to be ours). Nothing under /etc, /run or /var is
# touched. Export SLURM_CONF=$GENLIP_SLURM_DIR/slurm.conf to use it: the client commands find the private
# munge socket through the conf's AuthInfo.
set -euo pipefail
DIR=${GENLIP_SLURM_DIR:-/tmp/genlip-slurm}
PORT=${GENLIP_SLURM_PORT:-16817}
SLURMD_PORT=$((PORT + 1))
HOST=$(hostname -s)
CONF=$DIR/slurm.conf
MUNGE=$DIR/munge
SOCKET=$MUNGE/munge.socket

die() { echo "cluster.sh: $*" >&2; exit 1; }

# ours NAME PIDFILE: print the pid from PIDFILE if it is a live NAME process started with this directory's
# files (a stale file whose pid now belongs to another process does not count).
ours() {
  local pid
  [ -s "$2" ] || return 1
  pid=$(tr -dc 0-9 < "$2")
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/" || return 1
  echo "$pid"
}

running() { ours munged "$MUNGE/munged.pid" >/dev/null && ours slurmctld "$DIR/slurmctld.pid" >/dev/null \
  && ours slurmd "$DIR/slurmd.pid" >/dev/null; }

listening() {  # listening PORT: true if some process accepts TCP connections on PORT
  if command -v ss >/dev/null; then
    [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

write_conf() {
  cat > "$CONF" <<CONF
ClusterName=genlip-test
SlurmctldHost=$HOST
SlurmctldPort=$PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# The private munge daemon's socket. A requeued job may start again once its old credential expired:
# 10 s instead of the default 120 s.
AuthInfo=socket=$SOCKET,cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST CPUs=8 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
}

wait_pidfile() {  # wait_pidfile NAME PIDFILE
  for _ in $(seq 50); do ours "$1" "$2" >/dev/null && return 0; sleep 0.2; done
  die "$1 did not start; see $DIR/log"
}

start() {
  for bin in munged slurmctld slurmd sbatch; do
    command -v "$bin" >/dev/null || { echo "cluster.sh: $bin not found (apt-get install slurm-wlm munge)" >&2; exit 3; }
  done
  if running; then echo "already running"; echo "SLURM_CONF=$CONF"; return 0; fi
  stop >/dev/null  # a half-started cluster of ours from an earlier run
  for port in "$PORT" "$SLURMD_PORT"; do
    if listening "$port"; then
      die "port $port is in use by a process this script did not start (a real SLURM daemon?); choose other ports with GENLIP_SLURM_PORT=N (uses N and N+1)"
    fi
  done
  trap 'stop >/dev/null 2>&1' EXIT  # whatever fails below, leave nothing of ours running
  mkdir -p "$DIR"/{state,spool,log} "$MUNGE"
  chmod 0755 "$MUNGE"; chmod 0700 "$DIR/log"
  if [ ! -s "$MUNGE/munge.key" ]; then
    (umask 077 && dd if=/dev/urandom of="$MUNGE/munge.key" bs=1024 count=1 status=none)
  fi
  chmod 0400 "$MUNGE/munge.key"
  munged --force --key-file="$MUNGE/munge.key" --socket="$SOCKET" --pid-file="$MUNGE/munged.pid" \
    --seed-file="$MUNGE/munged.seed" --log-file="$DIR/log/munged.log"
  wait_pidfile munged "$MUNGE/munged.pid"
  write_conf
  export SLURM_CONF=$CONF
  slurmctld -f "$CONF"
  wait_pidfile slurmctld "$DIR/slurmctld.pid"
  slurmd -f "$CONF"
  wait_pidfile slurmd "$DIR/slurmd.pid"
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; then
      trap - EXIT
      echo "started"; echo "SLURM_CONF=$CONF"; return 0
    fi
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 0.5
  done
  sinfo >&2 || true
  die "the node did not come up; see $DIR/log"
}

end_pid() {  # end_pid NAME PIDFILE: TERM, then KILL after 10 s, the process PIDFILE names if it is ours
  local pid
  pid=$(ours "$1" "$2") || { rm -f "$2"; return 0; }
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
  if [ -d "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$2"
  echo "stopped $1 ($pid)"
}

stop() {
  if ours slurmctld "$DIR/slurmctld.pid" >/dev/null && [ -f "$CONF" ]; then
    # Jobs of this cluster only (its own controller): cancel them so no job step outlives its slurmd.
    local jobs
    jobs=$(SLURM_CONF=$CONF squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      SLURM_CONF=$CONF scancel $jobs 2>/dev/null || true
      for _ in $(seq 80); do
        [ -z "$(SLURM_CONF=$CONF squeue -h -o %A 2>/dev/null)" ] && break
        sleep 0.5
      done
    fi
  fi
  end_pid slurmd "$DIR/slurmd.pid"
  end_pid slurmctld "$DIR/slurmctld.pid"
  end_pid munged "$MUNGE/munged.pid"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running"; SLURM_CONF=$CONF sinfo; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

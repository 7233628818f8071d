#!/usr/bin/env bash
# A one-machine SLURM cluster for tests: munge + slurmctld + slurmd on this host (Debian's slurm-wlm).
# Usage: bash tests/slurm/cluster.sh start|stop|status        (needs root; installs nothing)
# Config and state live under $GENLIP_SLURM_DIR (default /tmp/genlip-slurm); export SLURM_CONF to use it.
set -euo pipefail
DIR=${GENLIP_SLURM_DIR:-/tmp/genlip-slurm}
HOST=$(hostname -s)
CONF=$DIR/slurm.conf

start() {
  for bin in munged slurmctld slurmd sbatch; do
    command -v "$bin" >/dev/null || { echo "cluster.sh: $bin not found (apt-get install slurm-wlm munge)" >&2; exit 3; }
  done
  mkdir -p "$DIR"/{state,spool,log} /run/munge /var/log/munge /var/lib/munge /etc/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  pgrep -x munged >/dev/null || su -s /bin/sh munge -c "/usr/sbin/munged" 2>/dev/null || /usr/sbin/munged --force
  cat > "$CONF" <<CONF
ClusterName=genlip-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again once its old credential expired: 10 s instead of the default 120 s.
AuthInfo=cred_expire=10
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
  export SLURM_CONF=$CONF
  pgrep -x slurmctld >/dev/null || slurmctld -f "$CONF"
  pgrep -x slurmd >/dev/null || slurmd -f "$CONF"
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; then echo "SLURM_CONF=$CONF"; return 0; fi
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 0.5
  done
  echo "cluster.sh: the node did not come up; see $DIR/log" >&2
  sinfo >&2 || true
  exit 1
}

stop() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) SLURM_CONF=$CONF sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

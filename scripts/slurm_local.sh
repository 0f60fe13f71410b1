#!/usr/bin/env bash
# A single-node Slurm on this machine, everything (config, munge key and socket, state, logs) in one folder.
# Used by tests/test_slurm.py; also a way to try `reproduce.py --engine slurm` without a cluster. Run as root.
#
#   scripts/slurm_local.sh start DIR    # starts munged, slurmctld, slurmd; prints `export SLURM_CONF=DIR/slurm.conf`
#   scripts/slurm_local.sh stop DIR     # cancels this cluster's jobs and stops the three daemons started in DIR
#
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge; Slurm 22.05 on Debian 12). The daemons get
# free TCP ports and their own munge socket, so they do not disturb a Slurm or munge already running here.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$(realpath -m "$2")
conf=$dir/slurm.conf

fail() { echo "slurm_local.sh: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_pidfile() {  # stop the process whose pid is in $1 (only the one this script started), wait up to 10 s
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

start() {
  [ "$(id -u)" -eq 0 ] || fail "run as root (slurmd starts jobs as their users)"
  for command in munged slurmctld slurmd sinfo sbatch; do
    command -v "$command" >/dev/null || fail "$command not found; install it: apt-get install slurm-wlm munge"
  done
  [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null && \
    fail "a Slurm from $dir is already running; stop it first: $0 stop $dir"
  mkdir -p "$dir"/munge "$dir"/state "$dir"/spool "$dir"/log
  chmod 700 "$dir"/munge

  # munge: a fresh 1 KiB key, its own socket in DIR (root runs it here, hence --force).
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munge.seed" \
    || fail "munged did not start; see $dir/log/munged.log"

  local host ctld_port slurmd_port cpus memory
  host=$(hostname -s)
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
  cpus=$(nproc)
  memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  cat > "$conf" <<EOF
# Single-node Slurm written by scripts/slurm_local.sh
ClusterName=reproduce
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=10
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$conf
  slurmctld || fail "slurmctld did not start; see $dir/log/slurmctld.log"
  slurmd || fail "slurmd did not start; see $dir/log/slurmd.log"
  for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      echo "export SLURM_CONF=$conf"
      return 0
    fi
    sleep 0.5
  done
  fail "the node did not become idle within 30 s: $(sinfo -h -o '%T %E' 2>&1 | head -1); see $dir/log/"
}

stop() {
  if [ -f "$conf" ] && [ -f "$dir/slurmctld.pid" ]; then
    export SLURM_CONF=$conf
    # Jobs of this private cluster only: squeue and scancel talk to DIR's controller.
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 60); do [ -z "$(squeue -h -t PD,R,CG -o %i 2>/dev/null)" ] && break; sleep 0.5; done
    fi
  fi
  stop_pidfile "$dir/slurmd.pid"
  stop_pidfile "$dir/slurmctld.pid"
  stop_pidfile "$dir/munge/munged.pid"
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac

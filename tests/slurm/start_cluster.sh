#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests that launch through submitit_slurm:
# installs Debian's slurm-wlm and munge if needed (root only), writes a minimal slurm.conf
# (one partition `debug` holding this host; no cgroups; a job credential lives 10 s, so a
# requeued job restarts after ~10 s instead of SLURM's default 2 minutes), and starts munged, slurmctld and
# slurmd. Idempotent: an already running cluster is left as it is. Prints one line and exits
# non-zero with the reason when it cannot (not root, no package manager, a daemon failing).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "slurm: not root, cannot install or start a cluster" >&2
  exit 1
fi
if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  echo "slurm: a cluster is already up: $(sinfo -h -o '%P %D %T' | head -1)"
  exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
state=/var/spool/slurm
mkdir -p /etc/slurm "$state/ctld" "$state/d" /var/log/slurm /run/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=distill
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
KillWait=10
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
cat > /etc/slurm/cgroup.conf <<CONF
CgroupPlugin=cgroup/v1
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
CONF

if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "slurm: cluster up: $(sinfo -h -o '%P %D %T %c CPUs' | head -1)"
    exit 0
  fi
  sleep 1
done
echo "slurm: the cluster did not come up: $(tail -3 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log 2>/dev/null | tr '\n' ' ')" >&2
exit 1

#!/usr/bin/env bash
# Start a real single-node Slurm cluster on this machine (Debian slurm-wlm + munge), for tests and for trying
# the sbatch scripts on a laptop. Needs root. Idempotent: does nothing when this configuration already runs;
# restarts the daemons when it changed (e.g. a stale slurm.conf from another machine).
#   sudo slurm/local/start-cluster.sh        then:   sinfo; sbatch ...
set -euo pipefail

if ! command -v slurmctld >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

NODE=$(hostname -s)
# The node's real shape as slurmd detects it; not `nproc`, which obeys OMP_NUM_THREADS and can under-count.
NODE_SHAPE=$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //')
STATE=/var/spool/slurm-sa-megatron
CONF=/etc/slurm/slurm.conf
WANTED="ClusterName=sa-megatron-local
SlurmctldHost=$NODE
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
KillWait=30
NodeName=$NODE $NODE_SHAPE State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES"

node_answers() { sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

if [ "$(cat "$CONF" 2>/dev/null)" = "$WANTED" ] && node_answers; then exit 0; fi
pkill -x slurmctld || true
pkill -x slurmd || true
while pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; do sleep 0.2; done
mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" /var/log/slurm /run/munge
printf '%s\n' "$WANTED" > "$CONF"

[ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
slurmctld
slurmd

for _ in $(seq 30); do
    if node_answers; then exit 0; fi
    sleep 1
done
echo "start-cluster: the Slurm node did not come up; see /var/log/slurm/" >&2
exit 1

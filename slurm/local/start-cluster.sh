#!/usr/bin/env bash
# Start a real Slurm cluster on this machine (Debian slurm-wlm + munge), for tests and for trying the sbatch
# scripts on a laptop. Needs root. Idempotent: does nothing when this configuration already runs; restarts the
# daemons when it changed (e.g. a stale slurm.conf from another machine).
#   sudo slurm/local/start-cluster.sh              one node (this host), /etc/slurm/slurm.conf:   sinfo; sbatch ...
#   sudo slurm/local/start-cluster.sh --nodes 2    two nodes in network namespaces joined by a bridge (see
#        slurm/local/two-nodes.sh); its own slurm.conf, so use it with SLURM_CONF=/etc/slurm-sam2/slurm.conf
#   sudo slurm/local/start-cluster.sh --nodes 2 --stop    tear the two-node cluster down
set -euo pipefail

NODES=1
STOP=
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) NODES=${2:?--nodes needs 1 or 2}; shift 2 ;;
        --nodes=*) NODES=${1#--nodes=}; shift ;;
        --stop) STOP=1; shift ;;
        *) echo "start-cluster: unknown argument '$1' (use --nodes 1|2 [--stop])" >&2; exit 2 ;;
    esac
done
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v ip >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge iproute2 >/dev/null
fi
case "$NODES" in
    1) [ -z "$STOP" ] || { echo "start-cluster: --stop is for --nodes 2" >&2; exit 2; } ;;
    2) exec bash "$(dirname "$0")/two-nodes.sh" ${STOP:+--stop} ;;
    *) echo "start-cluster: --nodes must be 1 or 2, got '$NODES'" >&2; exit 2 ;;
esac

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
# Stop only this cluster's daemons, by their pid files (Slurm's default paths): other Slurm daemons may run here,
# e.g. the two-node cluster's, which have their own pid files.
for pidfile in /run/slurmctld.pid /run/slurmd.pid; do
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
done
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
